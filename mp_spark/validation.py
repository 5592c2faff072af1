"""Client-side validation: rows Mixpanel would reject are set aside with a reason before any request."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

EPOCH_MS_1971 = 31_536_000_000  # Mixpanel rejects events before 1971-01-01
FUTURE_SLACK_MS = 3_600_000  # ... and more than one hour ahead of its clock
# Values Mixpanel refuses as distinct_id, compared case-insensitively (reference §3, "distinct_id").
PLACEHOLDER_DISTINCT_IDS = (
    "00000000-0000-0000-0000-000000000000", "anon", "anonymous", "nil", "none", "null", "n/a", "na",
    "undefined", "unknown", "<nil>", "0", "-1", "true", "false", "[]", "{}", "lmy47d",
)


def invalid_rules(now_ms: int) -> list[tuple[str, str, Column]]:
    """(field, message, condition) for each rule; the first rule a row breaks is its reason."""
    event, time_ms, distinct_id = F.col("event"), F.col("time"), F.col("distinct_id")
    return [
        ("event", "event is null or empty", event.isNull() | (F.trim(event) == "")),
        ("time", "time is null or not a readable timestamp", time_ms.isNull()),
        ("time", "time is before 1971-01-01", time_ms < EPOCH_MS_1971),
        ("time", "time is more than one hour in the future", time_ms > now_ms + FUTURE_SLACK_MS),
        ("distinct_id", "distinct_id is null", distinct_id.isNull()),
        ("distinct_id", "distinct_id is a placeholder value Mixpanel rejects",
         F.lower(distinct_id).isin(*PLACEHOLDER_DISTINCT_IDS)),
    ]


def with_invalid_reason(now_ms: int) -> Callable[[DataFrame], DataFrame]:
    """Add `invalid`: null for a sendable row, else a struct(field, message) naming the first broken rule.

    `now_ms` is fixed by the driver once per run, so a retried task judges rows exactly as before.
    """

    def apply(mapped: DataFrame) -> DataFrame:
        reasons = [
            F.when(condition, F.struct(F.lit(field).alias("field"), F.lit(message).alias("message")))
            for field, message, condition in invalid_rules(now_ms)
        ]
        return mapped.withColumn("invalid", F.coalesce(*reasons))

    return apply
