"""Source rows to Mixpanel profile updates (job.kind people or groups), as DataFrame transforms.

Each row becomes one update per operation of the mapping, in the order set, set_once, union,
unset, for example `{"$distinct_id": "u1", "$ignore_time": true, "$set": {"plan": "pro"}}`;
`mapping.spread` adds the entries it finds to `$set`. Values are fitted to Mixpanel's types and
limits exactly as event properties are. The project token each
update must carry is added by the sender on the executor, so it never appears in Spark's plans,
the Spark UI or the results.
"""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mp_spark.config import ConfigError, ProfileMappingConfig
from mp_spark.mapping import (
    JSON_OPTIONS,
    MAX_PROFILE_CONTAINER_BYTES,
    fitted_struct,
    mapped_ip,
    no_null_names,
    refuse_binary,
    spread_properties,
    with_entries,
)
from mp_spark.sources import analysed_expr
from mp_spark.validation import MAX_EVENT_BYTES, PLACEHOLDER_IDS


def to_profile_updates(mapping: ProfileMappingConfig) -> Callable[[DataFrame], DataFrame]:
    """Rows to `key` (the profile: distinct_id or group id), `line` (one update's JSON), `invalid`
    (null, or why not) and `trimmed` (a value was cut to fit Mixpanel's limits): one row per update."""

    def apply(df: DataFrame) -> DataFrame:
        if mapping.kind == "people":
            key_name = "$distinct_id"
            key = analysed_expr(df, mapping.distinct_id, "mapping.distinct_id").cast("string")
            identity = [key.alias(key_name)]
            if mapping.ip:  # without it, the request's ip=0 does the same for every update
                identity.append(mapped_ip(df, mapping.ip).alias("$ip"))
        else:
            key_name = "$group_id"
            key = analysed_expr(df, mapping.group_id, "mapping.group_id").cast("string")
            identity = [F.lit(mapping.group_key).alias("$group_key"), key.alias(key_name)]
        if mapping.ignore_time and mapping.kind == "people":  # group profiles have no $last_seen to keep
            identity.append(F.lit(True).alias("$ignore_time"))

        updates = []
        for operation in mapping.operations:
            value, cut, found = operation_value(df, mapping, operation)
            line = F.to_json(F.struct(*identity, value.alias(f"${operation}")), JSON_OPTIONS)
            if found is not None:  # mapping.spread: names from the data, added to $set below
                df = df.withColumn(SPREAD, found)
                cut = F.concat(cut, no_null_names(f"{SPREAD}.cut"))
            entries = F.to_json(F.col(f"{SPREAD}.values"), JSON_OPTIONS) if found is not None \
                else F.lit(None).cast("string")
            updates.append(F.struct(line.alias("line"), entries.alias("entries"), (F.size(cut) > 0).alias("trimmed")))
        rows = df.select(key.alias("key"), F.explode(F.array(*updates)).alias("update"))
        return with_entries(rows.select("key", "update.line", "update.entries", "update.trimmed")).withColumn(
            "invalid", invalid_reason(F.col("key"), F.col("line"), key_name))

    return apply


SPREAD = "__mp_spark_spread"  # a column of its own, so the names found by mapping.spread are computed once


def operation_value(df: DataFrame, mapping: ProfileMappingConfig, operation: str
                    ) -> tuple[Column, Column, Column | None]:
    """The value of `$<operation>`, the names of the properties cut in it and, for `$set` with
    `mapping.spread`, those found in the data (spread_properties)."""
    if operation == "unset":
        return F.array(*[F.lit(name) for name in mapping.unset]), F.array().cast("array<string>"), None
    if operation == "set":
        found = spread_properties(df, mapping.set, mapping.spread, named_key="mapping.set", spread_key="mapping.spread",
                                  container_bytes=MAX_PROFILE_CONTAINER_BYTES)
        return found.fixed, found.cut, found.spread
    expressions = getattr(mapping, operation)
    columns = {name: analysed_expr(df, e, f"mapping.{operation}.{name}") for name, e in expressions.items()}
    refuse_binary(df, columns, f"mapping.{operation}")
    if operation == "union":
        for name, column in columns.items():
            if not isinstance(df.select(column).schema[0].dataType, T.ArrayType):
                raise ConfigError(f"mapping.union.{name}: $union adds list items, so the expression must "
                                  f"yield an array (e.g. array({expressions[name]}))")
    return (*fitted_struct(df, columns, MAX_PROFILE_CONTAINER_BYTES), None)


def invalid_reason(key: Column, line: Column, key_name: str) -> Column:
    """Null for an update Mixpanel takes, else a struct(field, message) saying why not."""
    rules = [
        (key.isNull() | (F.trim(key) == ""), f"{key_name} is null or empty"),
        (F.lower(key).isin(*PLACEHOLDER_IDS), f"{key_name} is a placeholder value Mixpanel rejects"),
        (F.octet_length(line) >= MAX_EVENT_BYTES, "update is over 1 MB of JSON"),
    ]
    reasons = [F.when(broken, F.struct(F.lit(key_name).alias("field"), F.lit(message).alias("message")))
               for broken, message in rules]
    return F.coalesce(*reasons)
