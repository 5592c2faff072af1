"""Lookup tables (job.kind lookup_table): a dimension table replaces a Mixpanel lookup table.

Mixpanel's `PUT /lookup-tables/{id}` replaces the whole table from one CSV of at most 100 MB, so
the table is built on the driver: Spark reads, maps and checks the source and writes each row as a
CSV line (key first); the driver checks the size, puts the lines behind the header and sends them
in one gzip request with the sender's retries.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import operator
import time
from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mp_spark.batching import Batch
from mp_spark.config import Config, ConfigError, LookupTableMappingConfig
from mp_spark.endpoints import Endpoint
from mp_spark.mapping import JSON_OPTIONS, Fitted, fit_value, refuse_binary, unsendable, value_types, warn_left_out
from mp_spark.records import source_rows
from mp_spark.results import RunFiles, Summary, set_aside_records, summarize
from mp_spark.sender import BatchSender, SenderSettings, SendStopped
from mp_spark.sources import analysed_expr, column_named
from mp_spark.tally import OK, PartitionOutcome, Tally
from mp_spark.transport import DryRunTransport, RequestsTransport

MAX_TABLE_BYTES = 100 * 1024 * 1024  # Mixpanel answers 413 above this (uncompressed)
# RFC 4180: quotes doubled, spaces kept, null as an empty field (Mixpanel: "undefined").
CSV_OPTIONS = {"escape": '"', "ignoreLeadingWhiteSpace": "false", "ignoreTrailingWhiteSpace": "false"}


def to_lookup_rows(mapping: LookupTableMappingConfig) -> Callable[[DataFrame], tuple[DataFrame, str]]:
    """Rows to `key`, `line` (the row as CSV, key first), `invalid` and `trimmed`; and the CSV header."""

    def apply(df: DataFrame) -> tuple[DataFrame, str]:
        columns = {mapping.key: analysed_expr(df, f"`{mapping.key}`", "mapping.key")}
        columns.update(value_columns(df, mapping))
        texts = {f.name: csv_text(columns[f.name], f.dataType, f.name) for f in value_types(df, columns).fields}
        cuts = [F.coalesce(text.cut, F.lit(False)) for text in texts.values() if text.cut is not None]
        header = io.StringIO()
        csv.writer(header, lineterminator="\n").writerow(columns)
        rows = df.select(
            F.struct(*[text.value.alias(name) for name, text in texts.items()]).alias("row"),
            functools.reduce(operator.or_, cuts, F.lit(False)).alias("trimmed"),
        ).select(
            F.col("row").getField(mapping.key).alias("key"),
            F.to_csv("row", CSV_OPTIONS).alias("line"),
            "trimmed",
        )
        first_of_key = F.row_number().over(Window.partitionBy("key").orderBy("line")) == 1
        invalid = (
            F.when(F.col("key").isNull() | (F.trim("key") == ""), reason(mapping.key, "the key is null or empty"))
            .when(~first_of_key, reason(mapping.key, "duplicate key: only its first row (in CSV order) is sent"))
        )
        return rows.withColumn("invalid", invalid), header.getvalue().rstrip("\n")

    return apply


def value_columns(df: DataFrame, mapping: LookupTableMappingConfig) -> dict[str, Column]:
    """The table's columns after the key: `mapping.columns`, or every other source column that can be
    sent (the others are left out with a warning, as included columns of events are)."""
    if mapping.columns:
        chosen = {name: analysed_expr(df, e, f"mapping.columns.{name}") for name, e in mapping.columns.items()}
        refuse_binary(df, chosen, "mapping.columns")
        return chosen
    others = {f.name: f.dataType for f in df.schema.fields if f.name != mapping.key}
    left_out = {name: why for name, dtype in others.items() if (why := unsendable(dtype, level=1))}
    warn_left_out(left_out)
    return {name: column_named(name) for name in others if name not in left_out}


def csv_text(column: Column, dtype: T.DataType, name: str) -> Fitted:
    """A value as the text Mixpanel types in a lookup table (numbers, RFC 3339 times, true/false, JSON
    lists), fitted to its limits as an event property is, and whether it was cut."""
    left_out: dict[str, str] = {}
    fitted = fit_value(column, dtype, name, left_out)
    if fitted is None:
        raise ConfigError(f"mapping.columns.{name}: {left_out[name]} cannot be sent")
    warn_left_out(left_out)  # struct fields
    if isinstance(dtype, (T.ArrayType, T.MapType, T.StructType)):
        return Fitted(F.to_json(fitted.value, JSON_OPTIONS), fitted.cut)
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType)):
        return Fitted(F.concat(fitted.value, F.lit("Z")), fitted.cut)  # UTC already; RFC 3339 wants the zone
    return Fitted(fitted.value.cast("string"), fitted.cut)


def reason(field: str, message: str) -> Column:
    return F.struct(F.lit(field).alias("field"), F.lit(message).alias("message"))


def table_body(rows: DataFrame, header: str) -> tuple[bytes, int]:
    """The CSV Mixpanel receives (header, then the sendable rows by key) and its row count."""
    sendable = rows.filter(F.col("invalid").isNull())
    size = sendable.agg(F.sum(F.octet_length("line") + 1)).first()[0] or 0
    if size + len(header.encode()) + 1 > MAX_TABLE_BYTES:
        raise ConfigError(f"the lookup table would be {size / 2**20:,.0f} MB of CSV; Mixpanel takes at most 100 MB: "
                          "narrow it with source.where or fewer mapping.columns")
    lines = [row.line for row in sendable.orderBy("key").select("line").collect()]
    return ("\n".join([header, *lines]) + "\n").encode("utf-8"), len(lines)


def send_lookup_table(spark: SparkSession, config: Config, endpoint: Endpoint, files: RunFiles, run_id: str, *,
                      dry_run: bool) -> tuple[Summary, PartitionOutcome]:
    """Replace the table in one request from the driver: the run's only partition, and its summary."""
    started = time.monotonic()
    source = source_rows(spark, config)
    rows, header = to_lookup_rows(config.mapping)(source)
    body, sendable = table_body(rows, header)
    invalid, trimmed = rows.agg(F.count_if(F.col("invalid").isNotNull()),
                                F.count_if(F.col("invalid").isNull() & F.col("trimmed"))).first()
    settings = dataclasses.replace(SenderSettings.for_tasks(config.mixpanel), pacing=False)  # one request
    transport = DryRunTransport(endpoint.accepted) if dry_run else RequestsTransport()
    sender = BatchSender(endpoint, settings, transport)
    status, message, refused = OK, None, []
    try:
        for rejections in sender.send([Batch(body, sendable)] if sendable else []):
            refused += rejections
    except SendStopped as stopped:
        status, message = stopped.status, stopped.message
    finally:
        transport.close()
    outcome = PartitionOutcome(0, sender.tally + Tally(invalid=invalid, trimmed=trimmed), status, message,
                               round(time.monotonic() - started, 3))
    summary = summarize(run_id=run_id, dry_run=dry_run, rows_read=invalid + sendable, partitions=1,
                        outcomes=[outcome], resumed=0, imported_before=0, seconds=time.monotonic() - started,
                        results_path=files.path)
    files.write_partitions([outcome])
    valid = rows.filter(F.col("invalid").isNull())
    files.write_rejected(
        *([set_aside_records(rows)] if invalid else []),
        *[valid.select(F.lit("mixpanel").alias("stage"), F.lit(r.field).alias("field"),
                       F.lit(r.message).alias("message"), F.col("key").alias("insert_id"),
                       F.lit(0).cast("long").alias("partition"), F.col("line").alias("event"))
          for r in refused],  # Mixpanel refuses a table whole: every row, for the reason it gave
    )
    files.write_summary(summary)
    return summary, outcome
