"""Source rows to the records a run sends, one row per record (an event, or a profile update).

Every record has `key` (the `$insert_id`, or the profile's id), `line` (its JSON as Mixpanel
receives it), `invalid` (null, or why the job sets it aside) and `trimmed` (a value was cut to fit
Mixpanel's limits); events also have `time` (epoch ms) and `distinct_id`, and for a dry run's
profile `event`, `properties` and `cut` as mapped (a query that does not read them does not compute them).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mp_spark.config import Config
from mp_spark.mapping import to_json_lines, to_mixpanel_events
from mp_spark.presets import prepare_source
from mp_spark.profiles import to_profile_updates
from mp_spark.sources import read_source
from mp_spark.validation import with_invalid_reason


def source_rows(spark: SparkSession, config: Config, rows: DataFrame | None = None) -> DataFrame:
    """The source (or `rows` read from it) as the mapping reads it: as stored, or as a
    `mapping.preset` prepares it."""
    return (read_source(spark, config.source) if rows is None else rows).transform(prepare_source(config))


def prepare_events(source: DataFrame, config: Config, now_ms: int) -> DataFrame:
    """Rows outside `job.time_from`/`job.time_to` are not part of the run; rows with no time stay,
    to be set aside as invalid."""
    events = (
        source.transform(to_mixpanel_events(config.mapping))
        .transform(to_json_lines)
        .transform(with_invalid_reason(now_ms))
        .select("time", "distinct_id", F.col("insert_id").alias("key"), "line", "invalid",
                (F.size("cut") > 0).alias("trimmed"), "event", "properties", "cut")
    )
    time_ms, job = F.col("time"), config.job
    if job.time_from_ms is not None:
        events = events.filter(time_ms.isNull() | (time_ms >= job.time_from_ms))
    if job.time_to_ms is not None:
        events = events.filter(time_ms.isNull() | (time_ms < job.time_to_ms))
    return events


def prepare_records(source: DataFrame, config: Config, now_ms: int) -> DataFrame:
    if config.profiles:
        return source.transform(to_profile_updates(config.mapping))
    return prepare_events(source, config, now_ms)


def count_records(source: DataFrame, records: DataFrame, config: Config) -> int:
    """About how many records there are, as cheaply as Spark can tell (it only sizes the partitions):
    the source's own count, which Parquet and Delta answer from metadata, unless a time window needs
    the mapped time; profile mappings make one update per operation."""
    if config.profiles:
        return source.count() * len(config.mapping.operations)
    if config.job.time_from is not None or config.job.time_to is not None:
        return records.count()
    return source.count()
