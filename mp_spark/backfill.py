"""The driver's side of a backfill: read, map, validate, repartition, send from every executor, record."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from pyspark import Accumulator
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mp_spark.config import Config, ConfigError, Credentials, JobConfig
from mp_spark.dispatch import run_partitions
from mp_spark.ledger import Ledger, Manifest
from mp_spark.lookup import send_lookup_table, to_lookup_rows
from mp_spark.mapping import to_json_lines, to_mixpanel_events
from mp_spark.partition import COUNTERS, NO_OUTPUT, PartitionResult, TallyList, partition_sender
from mp_spark.presets import prepare_source
from mp_spark.preview import Preview, preview_events
from mp_spark.profiles import to_profile_updates
from mp_spark.progress import Progress
from mp_spark.results import ResultsWriter, Summary
from mp_spark.sender import SenderSettings
from mp_spark.sources import read_source
from mp_spark.validation import with_invalid_reason

log = logging.getLogger(__name__)


class BackfillAbortedError(RuntimeError):
    """A task hit a failure that retrying cannot fix (bad credentials, wrong host); the message says which."""


class BackfillFailedError(RuntimeError):
    """A task kept failing (Mixpanel kept answering 429/5xx, or the network kept failing) after Spark's retries."""


@dataclass(frozen=True)
class RunOptions:
    run_id: str
    results_path: str
    dry_run: bool = False
    resume: bool = False  # send only the partitions the run's ledger does not record as finished


def prepare_events(source: DataFrame, config: Config, now_ms: int) -> DataFrame:
    """Source rows to `time`, `key` (the `$insert_id`), `line` (the JSON /import receives), `invalid`
    (null, or why not) and `trimmed` (whether a property value was cut to fit Mixpanel's limits).

    Rows outside `job.time_from`/`job.time_to` are not part of the run; rows with no time stay,
    to be set aside as invalid.
    """
    events = (
        source.transform(to_mixpanel_events(config.mapping))
        .transform(to_json_lines)
        .transform(with_invalid_reason(now_ms))
        .select("time", F.col("insert_id").alias("key"), "line", "invalid", (F.size("cut") > 0).alias("trimmed"))
    )
    time_ms, job = F.col("time"), config.job
    if job.time_from_ms is not None:
        events = events.filter(time_ms.isNull() | (time_ms >= job.time_from_ms))
    if job.time_to_ms is not None:
        events = events.filter(time_ms.isNull() | (time_ms < job.time_to_ms))
    return events


def prepare_records(source: DataFrame, config: Config, now_ms: int) -> DataFrame:
    """What the run sends, one row per record (an event, or a profile update): `key`, `line`, `invalid`,
    `trimmed`, and for events `time`."""
    if config.profiles:
        return source.transform(to_profile_updates(config.mapping))
    return prepare_events(source, config, now_ms)


def preview_backfill(spark: SparkSession, config: Config) -> Preview:
    """For --dry-run: sample records as they would be sent, and for events a profile of their properties."""
    source = read_source(spark, config.source).transform(prepare_source(config))
    if config.job.kind == "lookup_table":
        rows, header = to_lookup_rows(config.mapping)(source)
        names = next(csv.reader([header]))
        lines = [row.line for row in rows.filter(F.col("invalid").isNull()).select("line").limit(5).collect()]
        return Preview([dict(zip(names, next(csv.reader([line])), strict=True)) for line in lines], rows=0,
                       approx_event_names=0, properties=[])
    sendable = prepare_records(source, config, int(time.time() * 1000)).filter(F.col("invalid").isNull())
    if config.profiles:
        samples = [json.loads(row.line) for row in sendable.select("line").limit(5).collect()]
        return Preview(samples, rows=0, approx_event_names=0, properties=[])
    return preview_events(source.transform(to_mixpanel_events(config.mapping)), sendable)


def send_phases(events: DataFrame, job: JobConfig, rows: int, now_ms: int) -> list[tuple[DataFrame, int]]:
    """What to send in order, with its row count: everything at once, or the recent window first.

    Mixpanel advises importing the last weeks first: its autocomplete draws on the last 30 days.
    """
    if job.order != "recent_first":
        return [(events, rows)]
    cutoff_ms = now_ms - job.recent_days * 86_400_000
    recent = events.filter(F.col("time") >= cutoff_ms)
    older = events.filter(F.col("time").isNull() | (F.col("time") < cutoff_ms))
    recent_rows = recent.count()
    return [(recent, recent_rows), (older, rows - recent_rows)]


def run_backfill(
    spark: SparkSession, config: Config, credentials: Credentials | None, options: RunOptions
) -> Summary:
    """Send every row of the source (or, resuming, every partition not recorded as finished) and
    write the results of the whole backfill."""
    started = time.monotonic()
    source = read_source(spark, config.source).transform(prepare_source(config))
    with sender_errors_as_run_errors():
        if config.job.kind == "lookup_table":
            rows, header = to_lookup_rows(config.mapping)(source)
            settings = SenderSettings.from_config(config.mixpanel, credentials, config.job.kind,
                                                  lookup_table_id=config.mapping.lookup_table_id)
            sent = Sent(rows, source.count(), [send_lookup_table(rows, header, settings, dry_run=options.dry_run)])
        else:
            sent = send_records(spark, source, config, credentials, options)
    return write_results(spark, sent, options, started)


@dataclass(frozen=True)
class Sent:
    records: DataFrame  # with `key`, `line` and `invalid`, to write the invalid ones out
    rows_read: int
    partitions: list[PartitionResult]  # every partition of the run, also those finished before a resume
    resumed_partitions: int = 0
    imported_before: int = 0  # by attempts before a resume


def send_records(
    spark: SparkSession, source: DataFrame, config: Config, credentials: Credentials | None, options: RunOptions
) -> Sent:
    """Events or profile updates from every executor, with progress, and a ledger for --resume."""
    ledger = Ledger(spark, options.results_path)
    resumed = ledger.read_manifest() if options.resume else None
    now_ms = resumed.now_ms if resumed else int(time.time() * 1000)  # a resumed run judges rows as before
    records = prepare_records(source, config, now_ms)

    # One pass sends the valid rows and counts the invalid ones; only if there are any does a
    # second pass write them out with their reasons. The row count (the source's own, unless a
    # time window needs the mapped time, or a row makes several profile updates) sizes the
    # partitions and is checked against what the tasks saw.
    windowed = config.job.time_from is not None or config.job.time_to is not None
    rows_read = records.count() if windowed or config.profiles else source.count()
    phases = send_phases(records, config.job, rows_read, now_ms)
    phase_rows = [rows for _, rows in phases]
    if resumed and resumed.dry_run:
        raise ConfigError(f"--resume: run {options.run_id} was a dry run, which sent nothing; start a new run instead")
    if resumed and resumed.phase_rows != phase_rows:
        raise ConfigError(f"--resume: the source changed since run {options.run_id} started ({resumed.phase_rows} "
                          f"rows to send then, {phase_rows} now), so its partitions no longer match; start a new "
                          "run instead (Mixpanel dedupes what was already sent by $insert_id)")
    if not resumed:
        ledger.write_manifest(Manifest(options.run_id, dataclasses.asdict(config), now_ms, phase_rows,
                                       dry_run=options.dry_run))
    finished_before = ledger.finished() if resumed else {}
    if finished_before:
        log.info("resuming run %s: %d partitions finished before are not sent again", options.run_id,
                 len(finished_before))

    settings = SenderSettings.from_config(config.mixpanel, credentials, config.job.kind,
                                          ip_mapped=config.profiles and config.mapping.ip is not None)
    tallies = spark.sparkContext.accumulator([], TallyList())
    progress = Progress(
        sc=spark.sparkContext, tallies=tallies, ledger=ledger, total_rows=rows_read, finished_before=finished_before,
        partitions=sum(partition_count(rows, config.job) for rows in phase_rows),
        interval_s=config.job.progress_interval_s,
    )
    with progress.running():
        first_index = 0
        for phase, rows in phases:
            send_phase(
                spark,
                phase,
                source_rows=rows,
                first_index=first_index,
                skip=finished_before.keys(),
                settings=settings,
                tallies=tallies,
                config=config,
                run_id=options.run_id,
                dry_run=options.dry_run,
            )
            first_index += partition_count(rows, config.job)
    partitions = sorted(progress.finished.values(), key=lambda p: p.index)
    return Sent(records, rows_read, partitions, len(finished_before),
                sum(p.imported for p in finished_before.values()))


def write_results(spark: SparkSession, sent: Sent, options: RunOptions, started: float) -> Summary:
    """partitions/, rejected/ (the invalid rows with their reasons, and Mixpanel's refusals) and summary.json."""
    results = ResultsWriter(spark, options.results_path)
    totals = {name: sum(getattr(p, name) for p in sent.partitions) for name in COUNTERS}
    invalid, imported = totals["invalid"], totals["imported"]
    if invalid:
        results.write_invalid(sent.records.filter(F.col("invalid").isNotNull()))
    results.write_partitions(sent.partitions)

    seconds = time.monotonic() - started
    summary = Summary(
        run_id=options.run_id,
        dry_run=options.dry_run,
        rows_read=sent.rows_read,
        imported=imported,
        rejected=totals["rejected"],
        invalid=invalid,
        trimmed=totals["trimmed"],
        partitions=len(sent.partitions),
        resumed_partitions=sent.resumed_partitions,
        batches=totals["batches"],
        requests=totals["requests"],
        retries=totals["retries"],
        raw_bytes=totals["raw_bytes"],
        gzip_bytes=totals["gzip_bytes"],
        seconds=round(seconds, 3),
        events_per_second=round((imported - sent.imported_before) / seconds, 1) if seconds else 0.0,
        results_path=results.path,
    )
    results.write_summary(summary)
    if not summary.balanced:
        log.error("accounting mismatch: the source has %d rows but %d were imported, %d rejected and %d invalid; "
                  "did it change during the run?", sent.rows_read, imported, summary.rejected, invalid)
    return summary


def partition_count(rows: int, job: JobConfig) -> int:
    return math.ceil(rows / job.records_per_partition)


def send_phase(
    spark: SparkSession,
    records: DataFrame,
    *,
    source_rows: int,
    first_index: int,
    skip: Collection[int],
    settings: SenderSettings,
    tallies: Accumulator,
    config: Config,
    run_id: str,
    dry_run: bool,
) -> None:
    """Repartition by `key` (`$insert_id`, or the profile: the same record always lands in the same
    partition, and a profile's updates stay in order) and send each.

    Partition i of this phase is the run's partition `first_index + i`; those in `skip` finished in
    an earlier attempt of the run, and their rows are dropped before the shuffle. Each task adds its
    tally to `tallies`.
    """
    partitions = partition_count(source_rows, config.job)
    finished = {index - first_index for index in skip if first_index <= index < first_index + partitions}
    to_send = [partition for partition in range(partitions) if partition not in finished]
    if not to_send:
        return
    # Requests in flight across the cluster = tasks sending at once x requests per task: keep the
    # product within the job-wide budget (at least one each, so no more tasks than the budget), and
    # split any events/s cap the same way.
    at_once = min(len(to_send), spark.sparkContext.defaultParallelism, config.mixpanel.max_in_flight)
    settings = settings.for_run(run_id, at_once, config.mixpanel)
    if dry_run:  # nothing to pace without a server
        settings = dataclasses.replace(settings, pacing=False, max_events_per_second=None)
    log.info("sending up to %d rows in %d partitions, %d at a time, %d requests in flight each",
             source_rows, len(to_send), at_once, settings.in_flight)
    valid = F.col("invalid").isNull()
    line_or_null = F.when(valid, F.concat(F.col("line"), F.lit("\n")))
    trimmed = F.when(valid & F.col("trimmed"), 1).otherwise(0).cast("byte")
    lines = records.select("key", line_or_null.alias("line"), trimmed.alias("trimmed"))
    if finished:  # the partition a row lands in, exactly as repartition(partitions, "key") computes it
        lines = lines.filter(~F.pmod(F.hash("key"), F.lit(partitions)).isin(sorted(finished)))
    partitioned = lines.repartition(partitions, "key").select("line", "trimmed")
    sender = partition_sender(settings, tallies, first_index=first_index, dry_run=dry_run)
    run_partitions(spark.sparkContext, partitioned.mapInArrow(sender, NO_OUTPUT), to_send, at_once=at_once,
                   describe=lambda partition: f"mp-spark {run_id}: partition {first_index + partition}")


@contextmanager
def sender_errors_as_run_errors() -> Iterator[None]:
    """A sender's failure, raised on the driver (a lookup table) or quoted in the traceback of a
    failed Spark task (events, profiles), as the run's: aborted, or failed after retries."""
    try:
        yield
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        fatal = re.search(r"FatalSendError: (.+)", text)
        if fatal:
            raise BackfillAbortedError(fatal.group(1).strip()) from None
        exhausted = re.search(r"RetriesExhaustedError: (.+)", text)
        if exhausted:
            raise BackfillFailedError(exhausted.group(1).strip()) from None
        raise
