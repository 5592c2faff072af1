import pytest
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from mp_spark.config import MappingConfig
from mp_spark.mapping import to_json_lines, to_mixpanel_events
from mp_spark.validation import with_invalid_reason

NOW_MS = 1_760_000_000_000
MAPPING = MappingConfig(event="name", time="ts", distinct_id="user")


def validated(df: DataFrame, mapping: MappingConfig) -> list[Row]:
    return df.transform(to_mixpanel_events(mapping)).transform(to_json_lines).transform(
        with_invalid_reason(NOW_MS)
    ).collect()


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
        (None, "A", NOW_MS, "distinct_id", "null (and there is no $user_id or $device_id)"),
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
    [row] = validated(df, mapping)
    if field is None:
        assert row.invalid is None
    else:
        assert row.invalid.field == field
        assert message in row.invalid.message


@pytest.mark.parametrize(
    ("device", "user", "field"),
    [("d-1", None, None), (None, "u-1", None), ("d-1", "u-1", None), (None, None, "distinct_id"),
     ("d-1", "undefined", "$user_id"), ("NULL", None, "$device_id")],
)
def test_simplified_id_merge_needs_one_real_identity(
    spark: SparkSession, device: str | None, user: str | None, field: str | None
) -> None:
    df = spark.createDataFrame([(device, user, "A", NOW_MS)], "device string, user string, name string, ts long")
    mapping = MappingConfig(event="name", time="ts", device_id="device", user_id="user", time_unit="ms")
    [row] = validated(df, mapping)
    assert (row.invalid.field if row.invalid else None) == field


def test_null_distinct_id_can_be_sent_as_empty_string(spark: SparkSession) -> None:
    df = spark.createDataFrame([(None, "A", NOW_MS)], "user string, name string, ts long")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", time_unit="ms", null_distinct_id="empty")
    [row] = validated(df, mapping)
    assert row.invalid is None and '"distinct_id":""' in row.line


def test_an_event_over_1_mb_is_invalid(spark: SparkSession) -> None:
    # Strings stop at 255 bytes and lists at 8 KB, so it takes many big lists: 130 lists of n items
    # of 33 bytes (n = 240 is just under 8 KB), spread from one map (130 mapped properties plan slowly).
    df = spark.createDataFrame([("u1", "A", NOW_MS, 100), ("u1", "A", NOW_MS, 240)],
                               "user string, name string, ts long, n int")
    lists = "map_from_arrays(transform(sequence(0, 129), i -> concat('list', i)), " \
            "array_repeat(array_repeat(repeat('x', 30), n), 130))"
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", time_unit="ms", spread=[lists])
    rows = validated(df, mapping)
    assert rows[0].invalid is None and len(rows[0].line) > 400_000
    assert rows[1].invalid.message == "event is over 1 MB of JSON"


def test_255_properties_are_too_many_but_nulls_do_not_count(spark: SparkSession) -> None:
    base = spark.createDataFrame([("u1", "A", NOW_MS, True), ("u1", "A", NOW_MS, False)],
                                 "user string, name string, ts long, full boolean")
    # 251 columns + time, distinct_id, $insert_id and ip = 255 properties
    wide = base.select("*", *[F.when(F.col("full"), F.lit(i)).alias(f"p{i}") for i in range(251)])
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", time_unit="ms", include_columns="*",
                            exclude_columns=["user", "name", "ts", "full"])
    full, sparse = validated(wide, mapping)
    assert full.invalid.field == "properties" and "255" in full.invalid.message
    assert sparse.invalid is None
