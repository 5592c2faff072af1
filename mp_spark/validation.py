"""Client-side validation: rows Mixpanel would reject are set aside with a reason before any request."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

EPOCH_MS_1971 = 31_536_000_000  # Mixpanel rejects events before 1971-01-01
FUTURE_SLACK_MS = 3_600_000  # ... and more than one hour ahead of its clock
MAX_EVENT_BYTES = 1_000_000  # an event's JSON must stay under 1 MB
MAX_PROPERTIES = 255  # an event must have fewer properties than this
# Values Mixpanel refuses as distinct_id, compared case-insensitively (Mixpanel's documentation of distinct_id).
PLACEHOLDER_IDS = (
    "00000000-0000-0000-0000-000000000000", "anon", "anonymous", "nil", "none", "null", "n/a", "na",
    "undefined", "unknown", "<nil>", "0", "-1", "true", "false", "[]", "{}", "lmy47d",
)
IDENTITY = {"distinct_id": "distinct_id", "device_id": "$device_id", "user_id": "$user_id"}
CORE_COLUMNS = ("time", "distinct_id", "insert_id", "device_id", "user_id", "ip")  # sent beside `properties`


def invalid_rules(mapped: DataFrame, now_ms: int) -> list[tuple[str, str, Column]]:
    """(field, message, condition) for each rule; the first rule a row breaks is its reason.

    Expects the columns of `to_mixpanel_events` plus `line` (`to_json_lines`).
    """
    event, time_ms = F.col("event"), F.col("time")
    no_identity = F.col("distinct_id").isNull() & F.col("device_id").isNull() & F.col("user_id").isNull()
    rules = [
        ("event", "event is null or empty", event.isNull() | (F.trim(event) == "")),
        ("time", "time is null or not a readable timestamp", time_ms.isNull()),
        ("time", "time is before 1971-01-01", time_ms < EPOCH_MS_1971),
        ("time", "time is more than one hour in the future", time_ms > now_ms + FUTURE_SLACK_MS),
        ("distinct_id", "distinct_id is null (and there is no $user_id or $device_id)", no_identity),
        *[
            (name, f"{name} is a placeholder value Mixpanel rejects", F.lower(F.col(column)).isin(*PLACEHOLDER_IDS))
            for column, name in IDENTITY.items()
        ],
        ("event", "event is over 1 MB of JSON", F.octet_length("line") >= MAX_EVENT_BYTES),
    ]
    property_names = [f.name for f in mapped.schema["properties"].dataType.fields]
    if len(property_names) + len(CORE_COLUMNS) >= MAX_PROPERTIES:  # only then can a row have too many
        values = [F.col(c) for c in CORE_COLUMNS] + [F.col("properties").getField(n) for n in property_names]
        # the non-null ones, counted in one flat expression (a chain of 300 additions overflows the JVM's stack)
        count = F.size(F.array_compact(F.array(*[F.when(v.isNotNull(), F.lit(1)) for v in values])))
        rules.append(("properties", f"event has {MAX_PROPERTIES} or more properties", count >= MAX_PROPERTIES))
    return rules


def with_invalid_reason(now_ms: int) -> Callable[[DataFrame], DataFrame]:
    """Add `invalid`: null for a sendable row, else a struct(field, message) naming the first broken rule.

    `now_ms` is fixed by the driver once per run, so a retried task judges rows exactly as before.
    """

    def apply(mapped: DataFrame) -> DataFrame:
        reasons = [
            F.when(condition, F.struct(F.lit(field).alias("field"), F.lit(message).alias("message")))
            for field, message, condition in invalid_rules(mapped, now_ms)
        ]
        return mapped.withColumn("invalid", F.coalesce(*reasons))

    return apply

