"""Source rows to Mixpanel events, as DataFrame transforms: all the per-row work happens in the JVM.

`to_mixpanel_events` gives one row per source row with the columns `event`, `time` (epoch ms),
`distinct_id`, `device_id`, `user_id`, `ip`, `insert_id` and `properties` (a struct of everything
else). `to_json_lines` turns that into the exact JSON line /import receives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mp_spark.config import ConfigError, MappingConfig
from mp_spark.sources import analysed_expr

log = logging.getLogger(__name__)

SECONDS_BELOW = 10**11  # an epoch number below this is seconds, above it milliseconds (10^11 s is year 5138)
MS_PER_UNIT = {"s": 1000.0, "ms": 1.0, "us": 0.001}
INSERT_ID_PATTERN = "^[0-9a-zA-Z-]{1,36}$"  # Mixpanel's rule for $insert_id
MIXPANEL_DATE_FORMAT = "yyyy-MM-dd'T'HH:mm:ss"  # Mixpanel's date type: ISO-8601, UTC, no zone

# Set from the mapping's own keys (mapping.time, mapping.distinct_id, ...); a property of the same
# name would silently replace them.
CORE_PROPERTIES = ("time", "distinct_id", "$insert_id", "$device_id", "$user_id", "ip")
# Mixpanel gives these names special meaning: `token` is the project token, `$ignore` drops the
# event, `bucket`/`$bucket` hide other events (reference §3, "Reserved and special property names").
SPECIAL_PROPERTIES = ("token", "bucket", "$bucket", "$ignore")
RESERVED_PROPERTIES = CORE_PROPERTIES + SPECIAL_PROPERTIES


def epoch_ntz() -> Column:
    return F.expr("TIMESTAMP_NTZ'1970-01-01 00:00:00'")


def to_mixpanel_events(mapping: MappingConfig) -> Callable[[DataFrame], DataFrame]:
    """Return a transform from source rows to mapped events (see the module docstring)."""

    def apply(df: DataFrame) -> DataFrame:
        event = analysed_expr(df, mapping.event, "mapping.event").cast("string")
        time_ms = to_epoch_ms(df, mapping)
        distinct_id, device_id, user_id = (
            optional_string(df, getattr(mapping, key), f"mapping.{key}")
            for key in ("distinct_id", "device_id", "user_id")
        )
        if mapping.null_distinct_id == "empty":  # Mixpanel keeps such events out of user analysis
            distinct_id = F.when(distinct_id.isNull() & device_id.isNull() & user_id.isNull(), F.lit("")).otherwise(
                distinct_id
            )
        ip = analysed_expr(df, mapping.ip, "mapping.ip").cast("string") if mapping.ip else F.lit("0")
        properties = property_struct(df, mapping)
        mapped = df.select(
            event.alias("event"),
            time_ms.alias("time"),
            distinct_id.alias("distinct_id"),
            device_id.alias("device_id"),
            user_id.alias("user_id"),
            ip.alias("ip"),
            properties.alias("properties"),
            *([analysed_expr(df, mapping.insert_id, "mapping.insert_id").cast("string").alias("insert_id")]
              if mapping.insert_id else []),
        )
        return mapped.withColumn("insert_id", insert_id_column(mapped, mapped_id=bool(mapping.insert_id)))

    return apply


def to_json_lines(mapped: DataFrame) -> DataFrame:
    """Add `line`: the event as /import wants it, `{"event": ..., "properties": {...}}`, nulls left out."""
    properties = F.struct(
        F.col("time"),
        F.col("distinct_id"),
        F.col("insert_id").alias("$insert_id"),
        F.col("device_id").alias("$device_id"),
        F.col("user_id").alias("$user_id"),
        F.col("ip"),
        F.col("properties.*"),
    )
    line = F.to_json(F.struct(F.col("event"), properties.alias("properties")), {"ignoreNullFields": "true"})
    return mapped.withColumn("line", line)


def optional_string(df: DataFrame, expression: str | None, key: str) -> Column:
    if expression is None:
        return F.lit(None).cast("string")
    return analysed_expr(df, expression, key).cast("string")


def to_epoch_ms(df: DataFrame, mapping: MappingConfig) -> Column:
    """`mapping.time` as integer epoch milliseconds, whatever the machine's or session's time zone."""
    column = analysed_expr(df, mapping.time, "mapping.time")
    dtype = df.select(column).schema[0].dataType
    if isinstance(dtype, T.TimestampType):
        return F.unix_millis(column)  # an instant: no zone involved
    if isinstance(dtype, T.TimestampNTZType):
        return F.timestamp_diff("MILLISECOND", epoch_ntz(), column)  # wall-clock time read as UTC
    if isinstance(dtype, T.DateType):
        return F.unix_date(column).cast("long") * 86_400_000
    if isinstance(dtype, T.NumericType):
        return _number_to_ms(column, mapping.time_unit)
    if isinstance(dtype, T.StringType):
        return _string_to_ms(column, mapping.time_unit)
    raise ConfigError(f"mapping.time yields {dtype.simpleString()}; expected a timestamp, a date, "
                      "an epoch number or an ISO-8601 string")


def _number_to_ms(number: Column, unit: str | None) -> Column:
    value = number.cast("double")
    if unit is None:
        factor = F.when(F.abs(value) < SECONDS_BELOW, F.lit(1000.0)).otherwise(F.lit(1.0))
    else:
        factor = F.lit(MS_PER_UNIT[unit])
    return F.round(value * factor).cast("long")


def _string_to_ms(text: Column, unit: str | None) -> Column:
    """Epoch digits as numbers; ISO strings with a zone as instants; zone-less ISO strings as UTC."""
    has_zone = text.rlike(r"(?i)\d\d:\d\d(:\d\d(\.\d+)?)?\s*(z|[+-]\d\d(:?\d\d)?)$")  # after a clock time
    return (
        F.when(text.rlike(r"^-?\d+(\.\d+)?$"), _number_to_ms(text, unit))
        .when(has_zone, F.unix_millis(text.try_cast("timestamp")))
        .otherwise(F.timestamp_diff("MILLISECOND", epoch_ntz(), text.try_cast("timestamp_ntz")))
    )


def property_struct(df: DataFrame, mapping: MappingConfig) -> Column:
    """The event's own properties: `mapping.properties` plus the included source columns."""
    for name in mapping.properties:
        if name in RESERVED_PROPERTIES:
            raise ConfigError(f"mapping.properties.{name}: {name!r} is reserved by Mixpanel"
                              + (f"; set it with mapping.{name.lstrip('$')}" if name in CORE_PROPERTIES else ""))
    columns = {
        name: analysed_expr(df, expression, f"mapping.properties.{name}")
        for name, expression in mapping.properties.items()
    }
    for name in included_columns(df, mapping):
        if name not in columns:
            columns[name] = F.col(f"`{name}`")
    typed = df.select(*[c.alias(n) for n, c in columns.items()]).schema if columns else T.StructType()
    return F.struct(*[to_property_value(columns[f.name], f.dataType).alias(f.name) for f in typed.fields])


def included_columns(df: DataFrame, mapping: MappingConfig) -> list[str]:
    """Source columns sent under their own names; reserved names are left out with a warning."""
    include = mapping.include_columns
    chosen = list(df.columns) if include == "*" else list(include)
    for key, names in (("mapping.include_columns", chosen), ("mapping.exclude_columns", mapping.exclude_columns)):
        unknown = [n for n in names if n not in df.columns]
        if unknown:
            raise ConfigError(f"{key}: unknown column {unknown[0]!r} (source columns: {', '.join(df.columns)})")
    kept = [n for n in chosen if n not in mapping.exclude_columns]
    reserved = [n for n in kept if n in RESERVED_PROPERTIES]
    if reserved:
        log.warning("not sending source columns named after reserved Mixpanel properties: %s "
                    "(map them under another name in mapping.properties)", ", ".join(reserved))
    return [n for n in kept if n not in RESERVED_PROPERTIES]


def to_property_value(column: Column, dtype: T.DataType) -> Column:
    """Spark value to the JSON Mixpanel understands (types the JSON writer gets wrong are rewritten)."""
    if not needs_rewrite(dtype):
        return column
    if isinstance(dtype, T.TimestampType):
        utc_wall_clock = F.timestamp_add("MICROSECOND", F.unix_micros(column), epoch_ntz())
        return F.date_format(utc_wall_clock, MIXPANEL_DATE_FORMAT)
    if isinstance(dtype, T.TimestampNTZType):
        return F.date_format(column, MIXPANEL_DATE_FORMAT)
    if isinstance(dtype, (T.FloatType, T.DoubleType)):
        # NaN and Infinity are not JSON: leave the property out rather than send invalid JSON.
        finite = ~F.isnan(column) & (F.abs(column) != F.lit(float("inf")))
        return F.when(finite, column)
    if isinstance(dtype, T.BinaryType):
        return F.lit(None).cast("string")  # binary blobs are not sent
    if isinstance(dtype, T.ArrayType):
        return F.transform(column, lambda item: to_property_value(item, dtype.elementType))
    if isinstance(dtype, T.MapType):
        return F.transform_values(column, lambda _key, value: to_property_value(value, dtype.valueType))
    assert isinstance(dtype, T.StructType)
    fields = [to_property_value(column[f.name], f.dataType).alias(f.name) for f in dtype.fields]
    return F.when(column.isNotNull(), F.struct(*fields))


def needs_rewrite(dtype: T.DataType) -> bool:
    if isinstance(dtype, (T.TimestampType, T.TimestampNTZType, T.FloatType, T.DoubleType, T.BinaryType)):
        return True
    if isinstance(dtype, T.ArrayType):
        return needs_rewrite(dtype.elementType)
    if isinstance(dtype, T.MapType):
        return needs_rewrite(dtype.valueType)
    if isinstance(dtype, T.StructType):
        return any(needs_rewrite(f.dataType) for f in dtype.fields)
    return False


def insert_id_column(mapped: DataFrame, *, mapped_id: bool) -> Column:
    """A deterministic `$insert_id`, so a rerun sends the same ids and Mixpanel deduplicates them.

    Without `mapping.insert_id` it is the first 36 hex digits of a SHA-256 over the event, time,
    identity (distinct_id, device_id, user_id) and properties. A mapped id that breaks Mixpanel's rule (at most 36 of
    [0-9a-zA-Z-]) is replaced by a hash of itself, which keeps it stable and unique; a null one
    falls back to the content hash.
    """
    content = F.to_json(F.struct("event", "time", "distinct_id", "device_id", "user_id", "properties"))
    derived = F.substring(F.sha2(content, 256), 1, 36)
    if not mapped_id:
        return derived
    given = F.col("insert_id")
    return (
        F.when(given.isNull(), derived)
        .when(given.rlike(INSERT_ID_PATTERN), given)
        .otherwise(F.substring(F.sha2(given, 256), 1, 36))
    )
