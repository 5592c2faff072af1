"""Read the configured source (Parquet, Delta, JSON; a path or a catalog table) into a DataFrame, or,
for job.mode incremental, open it as a stream."""

from __future__ import annotations

import dataclasses
import os
import re
from urllib.parse import unquote, urlparse

from pyspark.errors import AnalysisException, ParseException, PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mp_spark.config import ConfigError, JobConfig, SourceConfig, utc_text

DELTA_VERSION = "4.4.0"  # the delta-spark release built for Spark 4.0, 4.1 and 4.2 (pyproject.toml pins it)
GLOB = re.compile(r"[*?[{]")
MAX_FILES_WALKED = 10_000


def read_source(spark: SparkSession, source: SourceConfig) -> DataFrame:
    """Open the source as a DataFrame; errors name the config key that caused them."""
    return _naming_missing_delta(spark, source, lambda: _read(spark, source))


def _naming_missing_delta(spark: SparkSession, source: SourceConfig, open_source) -> DataFrame:
    """`open_source()`, with a Spark that lacks Delta Lake for a Delta source as a ConfigError that says
    how to add it."""
    try:
        return open_source()
    except Exception as exc:
        if error_condition(exc) == "DATA_SOURCE_NOT_FOUND" and source.format == "delta":
            raise ConfigError(delta_missing(spark.version)) from None
        raise


CHANGE_FEED_COLUMNS = ("_change_type", "_commit_version", "_commit_timestamp")


def open_stream(spark: SparkSession, source: SourceConfig, job: JobConfig) -> DataFrame:
    """The source as a streaming DataFrame: a Delta table's new commits (or its change data feed), or
    the new files under a path. Files need a schema, which is the one the files have now unless
    source.schema gives it: a stream cannot infer one as it goes."""
    return _naming_missing_delta(spark, source, lambda: _open_stream(spark, source, job))


def _open_stream(spark: SparkSession, source: SourceConfig, job: JobConfig) -> DataFrame:
    reader = spark.readStream.format(source.format)
    starting = source.starting_timestamp
    options = {
        "readChangeFeed": "true" if source.change_feed else None,
        "skipChangeCommits": "true" if source.skip_change_commits else None,
        "startingVersion": source.starting_version,
        "startingTimestamp": utc_text("source.starting_timestamp", starting) if starting else None,
        "maxFilesPerTrigger": job.max_files_per_batch, "maxBytesPerTrigger": job.max_bytes_per_batch,
        "timeZone": "UTC" if source.format == "json" else None,  # as read_source reads JSON
    }
    for name, value in options.items():
        if value is not None:
            reader = reader.option(name, str(value))
    key = "source.path" if source.path is not None else "source.table"
    try:
        if source.format != "delta":
            reader = reader.schema(read_source(spark, dataclasses.replace(source, where=None)).schema)
        df = reader.load(source.path) if source.path is not None else reader.table(source.table)
        df.schema  # noqa: B018 - as in _read: a bad path fails here, with the key named
    except (AnalysisException, ParseException) as exc:
        raise ConfigError(f"{key}: cannot read {source.format} source as a stream: {first_line(exc)}") from None
    if source.where:
        df = df.filter(analysed_expr(df, source.where, "source.where"))
    return df


def is_small_local_source(source: SourceConfig, max_bytes: int) -> bool:
    """Whether the source's files are on this machine's disk and hold at most `max_bytes` in all.

    No for a table or a remote path, whose size only Spark can tell, and for what this walk could
    count wrongly: a glob (Spark expands it, and a path that exists may have its characters), a
    directory with symbolic links in it (Spark follows them), unreadable directories, more than
    MAX_FILES_WALKED files. The walk stops as soon as it can answer no.
    """
    if source.path is None or GLOB.search(source.path):
        return False
    url = urlparse(source.path)
    if url.scheme not in ("", "file") or url.netloc not in ("", "localhost"):
        return False
    path = unquote(url.path) if url.scheme else source.path
    if os.path.isfile(path):
        return os.path.getsize(path) <= max_bytes
    if not os.path.isdir(path):
        return False
    total = files = 0

    def unreadable(error: OSError) -> None:
        raise error

    try:
        for directory, subdirectories, names in os.walk(path, onerror=unreadable):
            entries = [os.path.join(directory, name) for name in subdirectories + names]
            files += len(names)
            if files > MAX_FILES_WALKED or any(os.path.islink(entry) for entry in entries):
                return False
            total += sum(os.path.getsize(os.path.join(directory, name)) for name in names)
            if total > max_bytes:
                return False
    except OSError:  # unreadable, or changed while walked
        return False
    return True


def delta_missing(spark_version: str) -> str:
    major_minor = ".".join(spark_version.split(".")[:2])
    return (
        f"source.format: delta needs Delta Lake, which this Spark {spark_version} does not have. With "
        f"spark-submit (or on a Spark Connect server), add\n"
        f"  --packages io.delta:delta-spark_{major_minor}_2.13:{DELTA_VERSION}\n"
        "  --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension\n"
        "  --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog\n"
        "Databricks has Delta built in, and so has EMR with its delta-defaults classification."
    )


def error_condition(exc: BaseException) -> str | None:
    """Spark's error condition (such as TABLE_OR_VIEW_NOT_FOUND) of a failure, if it has one: from the
    Python exception, or from the Java one that classic PySpark did not translate."""
    if isinstance(exc, PySparkException):
        return exc.getCondition()
    java = getattr(exc, "java_exception", None)  # py4j's Py4JJavaError
    try:
        return java.getCondition() if java is not None else None
    except Exception:  # not a SparkThrowable
        return None


def _read(spark: SparkSession, source: SourceConfig) -> DataFrame:
    reader = spark.read.format(source.format)
    if source.format == "json":  # a zone-less time read as a `timestamp` (source.schema) is UTC, not local
        reader = reader.option("timeZone", "UTC")
    if source.version is not None:
        reader = reader.option("versionAsOf", source.version)
    if source.timestamp is not None:
        reader = reader.option("timestampAsOf", utc_text("source.timestamp", source.timestamp))
    if source.schema is not None:
        reader = _with_schema(reader, source.schema)
    key = "source.path" if source.path is not None else "source.table"
    try:
        df = reader.load(source.path) if source.path is not None else reader.table(source.table)
        df.schema  # noqa: B018 - force analysis here so a bad path fails with the key named
    except (AnalysisException, ParseException) as exc:
        no_files = "UNABLE_TO_INFER_SCHEMA" in str(exc) and source.schema is None
        raise ConfigError(f"{key}: cannot read {source.format} source: {first_line(exc)}"
                          + ("; no files there yet? source.schema gives their schema" if no_files else "")) from None
    if source.where:
        df = df.filter(analysed_expr(df, source.where, "source.where"))
    return df


def unhashable(dtype: T.DataType) -> bool:
    """A type that holds a map or a VARIANT, which Spark's hash functions refuse (hash its JSON instead)."""
    if isinstance(dtype, (T.MapType, T.VariantType)):
        return True
    if isinstance(dtype, T.ArrayType):
        return unhashable(dtype.elementType)
    return isinstance(dtype, T.StructType) and any(unhashable(f.dataType) for f in dtype.fields)


def column_named(name: str) -> F.Column:
    """The column of this exact name, though it holds dots or backticks."""
    return F.col("`" + name.replace("`", "``") + "`")


def analysed_expr(df: DataFrame, expression: str, key: str) -> F.Column:
    """Parse a Spark SQL expression against `df`, turning an unknown column into a ConfigError for `key`."""
    try:
        column = F.expr(expression)
        df.select(column).schema  # noqa: B018 - eager analysis: fail before any work starts
    except (AnalysisException, ParseException) as exc:
        raise ConfigError(f"{key}: {first_line(exc)} (expression: {expression!r})") from None
    return column


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _with_schema(reader, schema: str):
    try:
        return reader.schema(schema)
    except (AnalysisException, ParseException) as exc:
        raise ConfigError(f"source.schema: not a valid DDL schema: {first_line(exc)}") from None
