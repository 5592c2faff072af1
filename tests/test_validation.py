import pytest
from pyspark.sql import SparkSession

from mp_spark.config import MappingConfig
from mp_spark.mapping import to_mixpanel_events
from mp_spark.validation import with_invalid_reason

NOW_MS = 1_760_000_000_000
MAPPING = MappingConfig(event="name", time="ts", distinct_id="user")


@pytest.mark.parametrize(
    ("user", "name", "ts_ms", "field", "message"),
    [
        ("u1", "A", NOW_MS - 1000, None, None),
        ("u1", "A", NOW_MS + 3_000_000, None, None),
        ("", "A", NOW_MS, None, None),  # Mixpanel accepts "" (left out of user analysis)
        ("u1", None, NOW_MS, "event", "null or empty"),
        ("u1", "  ", NOW_MS, "event", "null or empty"),
        ("u1", "A", None, "time", "null"),
        ("u1", "A", 31_535_999_999, "time", "before 1971"),
        ("u1", "A", NOW_MS + 3_700_000, "time", "future"),
        (None, "A", NOW_MS, "distinct_id", "null"),
        ("Anonymous", "A", NOW_MS, "distinct_id", "placeholder"),
        ("00000000-0000-0000-0000-000000000000", "A", NOW_MS, "distinct_id", "placeholder"),
        ("LMY47D", "A", NOW_MS, "distinct_id", "placeholder"),
    ],
)
def test_with_invalid_reason_names_the_first_broken_rule(
    spark: SparkSession, user: str | None, name: str | None, ts_ms: int | None, field: str | None,
    message: str | None
) -> None:
    df = spark.createDataFrame([(user, name, ts_ms)], "user string, name string, ts long")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", time_unit="ms")
    [row] = df.transform(to_mixpanel_events(mapping)).transform(with_invalid_reason(NOW_MS)).collect()
    if field is None:
        assert row.invalid is None
    else:
        assert row.invalid.field == field
        assert message in row.invalid.message
