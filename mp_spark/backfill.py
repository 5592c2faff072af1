"""The driver's side of a backfill: read, map, validate, repartition, send from every executor, record."""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mp_spark.config import Config, Credentials
from mp_spark.mapping import to_json_lines, to_mixpanel_events
from mp_spark.partition import PartitionResult, new_results_accumulator, partition_sender
from mp_spark.results import ResultsWriter, Summary
from mp_spark.sender import SenderSettings
from mp_spark.sources import read_source
from mp_spark.validation import with_invalid_reason

log = logging.getLogger(__name__)


class BackfillAbortedError(RuntimeError):
    """A task hit a failure that retrying cannot fix (bad credentials, wrong host); the message says which."""


@dataclass(frozen=True)
class RunOptions:
    run_id: str
    results_path: str
    dry_run: bool = False


def prepare_events(source: DataFrame, config: Config, now_ms: int) -> DataFrame:
    """Source rows to `insert_id`, `line` (the JSON /import receives) and `invalid` (null, or why not)."""
    return (
        source.transform(to_mixpanel_events(config.mapping))
        .transform(with_invalid_reason(now_ms))
        .transform(to_json_lines)
        .select("insert_id", "line", "invalid")
    )


def run_backfill(
    spark: SparkSession, config: Config, credentials: Credentials | None, options: RunOptions
) -> Summary:
    started = time.monotonic()
    now_ms = int(time.time() * 1000)
    events = prepare_events(read_source(spark, config.source), config, now_ms)
    results = ResultsWriter(spark, options.results_path)

    counts = events.agg(F.count(F.lit(1)).alias("rows"), F.count("invalid").alias("invalid")).first()
    rows_read, invalid = int(counts["rows"]), int(counts["invalid"])
    log.info("read %d rows: %d to send, %d invalid", rows_read, rows_read - invalid, invalid)
    if invalid:
        results.write_invalid(events.filter(F.col("invalid").isNotNull()))

    partitions = send_events(
        spark,
        events.filter(F.col("invalid").isNull()),
        expected_rows=rows_read - invalid,
        settings=SenderSettings.from_config(config.mixpanel, credentials),
        records_per_partition=config.job.records_per_partition,
        dry_run=options.dry_run,
    )
    results.write_partitions(partitions)

    seconds = time.monotonic() - started
    imported = sum(p.imported for p in partitions)
    summary = Summary(
        run_id=options.run_id,
        dry_run=options.dry_run,
        rows_read=rows_read,
        imported=imported,
        rejected=sum(p.rejected for p in partitions),
        invalid=invalid,
        partitions=len(partitions),
        batches=sum(p.batches for p in partitions),
        requests=sum(p.requests for p in partitions),
        retries=sum(p.retries for p in partitions),
        raw_bytes=sum(p.raw_bytes for p in partitions),
        gzip_bytes=sum(p.gzip_bytes for p in partitions),
        seconds=round(seconds, 3),
        events_per_second=round(imported / seconds, 1) if seconds else 0.0,
        results_path=results.path,
    )
    results.write_summary(summary)
    if not summary.balanced:
        log.error("accounting mismatch: %d rows read but %d imported + %d rejected + %d invalid; "
                  "did the source change during the run?", rows_read, imported, summary.rejected, invalid)
    return summary


def send_events(
    spark: SparkSession,
    valid_events: DataFrame,
    *,
    expected_rows: int,
    settings: SenderSettings,
    records_per_partition: int,
    dry_run: bool,
) -> list[PartitionResult]:
    """Repartition by `$insert_id` (the same event always lands in the same partition) and send each."""
    if expected_rows == 0:
        return []
    partition_count = math.ceil(expected_rows / records_per_partition)
    results = new_results_accumulator(spark.sparkContext)
    lines = valid_events.repartition(partition_count, "insert_id").select("line")
    try:
        lines.foreachPartition(partition_sender(settings, dry_run=dry_run, results=results))
    except Exception as exc:
        fatal = re.search(r"FatalSendError: (.+)", str(exc))
        if fatal:
            raise BackfillAbortedError(fatal.group(1).strip()) from None
        raise
    return sorted(results.value, key=lambda p: p.index)
