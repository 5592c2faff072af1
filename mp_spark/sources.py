"""Read the configured source (Parquet, Delta, JSON; a path or a catalog table) into a DataFrame."""

from __future__ import annotations

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mp_spark.config import ConfigError, SourceConfig


def read_source(spark: SparkSession, source: SourceConfig) -> DataFrame:
    """Open the source as a DataFrame; errors name the config key that caused them."""
    reader = spark.read.format(source.format)
    if source.version is not None:
        reader = reader.option("versionAsOf", source.version)
    if source.timestamp is not None:
        reader = reader.option("timestampAsOf", source.timestamp)
    if source.schema is not None:
        reader = _with_schema(reader, source.schema)
    key = "source.path" if source.path is not None else "source.table"
    try:
        df = reader.load(source.path) if source.path is not None else reader.table(source.table)
        df.schema  # noqa: B018 - force analysis here so a bad path fails with the key named
    except (AnalysisException, ParseException) as exc:
        raise ConfigError(f"{key}: cannot read {source.format} source: {first_line(exc)}") from None
    if source.where:
        df = df.filter(analysed_expr(df, source.where, "source.where"))
    return df


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
