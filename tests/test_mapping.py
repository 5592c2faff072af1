import datetime as dt
import json

import pytest
from pyspark.sql import DataFrame, SparkSession

from mp_spark.config import ConfigError, MappingConfig
from mp_spark.mapping import to_json_lines, to_mixpanel_events

MAPPING = MappingConfig(event="name", time="ts", distinct_id="user")
JAN_2_2024_MS = 1_704_164_645_000  # 2024-01-02T03:04:05Z


def sent_events(df: DataFrame, mapping: MappingConfig = MAPPING) -> list[dict]:
    lines = df.transform(to_mixpanel_events(mapping)).transform(to_json_lines).select("line").collect()
    return [json.loads(row.line) for row in lines]


@pytest.mark.parametrize(
    ("ddl", "value", "unit"),
    [
        ("ts long", 1_704_164_645, None),
        ("ts long", JAN_2_2024_MS, None),
        ("ts long", JAN_2_2024_MS, "ms"),
        ("ts long", JAN_2_2024_MS * 1000, "us"),
        ("ts double", 1_704_164_645.0, "s"),
        ("ts string", "1704164645", None),
        ("ts string", "2024-01-02T03:04:05Z", None),
        ("ts string", "2024-01-02T04:04:05+01:00", None),
        ("ts string", "2024-01-02 03:04:05", None),
        ("ts timestamp", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), None),
        ("ts timestamp_ntz", dt.datetime(2024, 1, 2, 3, 4, 5), None),
    ],
)
def test_time_becomes_epoch_ms_in_utc_whatever_the_session_zone(
    spark: SparkSession, ddl: str, value: object, unit: str | None
) -> None:
    df = spark.createDataFrame([("u1", "Signup", value)], f"user string, name string, {ddl}")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", time_unit=unit)
    [event] = sent_events(df, mapping)
    assert event["properties"]["time"] == JAN_2_2024_MS


@pytest.mark.parametrize(("ddl", "value"), [("ts date", dt.date(2024, 1, 2)), ("ts string", "2024-01-02")])
def test_a_date_is_midnight_utc(spark: SparkSession, ddl: str, value: object) -> None:
    df = spark.createDataFrame([("u1", "Signup", value)], f"user string, name string, {ddl}")
    assert sent_events(df)[0]["properties"]["time"] == 1_704_153_600_000


def test_event_has_mixpanel_shape_with_constant_event_name(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", 1_704_164_645)], "user string, ts long")
    mapping = MappingConfig(event="'Signed Up'", time="ts", distinct_id="user")
    [event] = sent_events(df, mapping)
    assert event["event"] == "Signed Up"
    assert list(event["properties"])[:3] == ["time", "distinct_id", "$insert_id"]
    assert event["properties"]["distinct_id"] == "u1"


def test_derived_insert_id_is_deterministic_and_mixpanel_shaped(spark: SparkSession) -> None:
    rows = [("u1", "A", 1_704_164_645, "x"), ("u1", "A", 1_704_164_645, "y"), ("u1", "A", 1_704_164_645, "x")]
    df = spark.createDataFrame(rows, "user string, name string, ts long, p string")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", include_columns=["p"])
    first = [e["properties"]["$insert_id"] for e in sent_events(df, mapping)]
    again = [e["properties"]["$insert_id"] for e in sent_events(df, mapping)]
    assert first == again
    assert first[0] == first[2] != first[1]  # identical rows share an id; a changed property changes it
    assert all(len(i) <= 36 and i.replace("-", "").isalnum() for i in first)


def test_mapped_insert_id_is_kept_when_valid_and_rehashed_when_not(spark: SparkSession) -> None:
    rows = [("u1", "A", 1, "order-17"), ("u1", "A", 1, "order_17/with:bad chars"), ("u1", "A", 1, None),
            ("u1", "A", 1, "Null")]
    df = spark.createDataFrame(rows, "user string, name string, ts long, oid string")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", insert_id="oid")
    ids = [e["properties"]["$insert_id"] for e in sent_events(df, mapping)]
    assert ids[0] == "order-17"
    assert len(ids[1]) == 36 and ids[1].isalnum()
    assert len(ids[2]) == 36 and ids[2] != ids[1]
    assert len(ids[3]) == 36 and ids[3].isalnum()  # a placeholder Mixpanel refuses


def test_properties_and_included_columns_are_sent_with_their_types(spark: SparkSession) -> None:
    row = ("u1", "A", 1_704_164_645, dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), dt.date(2024, 1, 2),
           True, 2.5, float("nan"), bytearray(b"\x00"), [1, 2], {"k": 1.5}, None)
    df = spark.createDataFrame([row], "user string, name string, ts long, at timestamp, day date, flag boolean, "
                                      "price double, ratio double, blob binary, nums array<int>, "
                                      "m map<string,double>, missing string")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", properties={"Plan Name": "upper(name)"},
                            include_columns="*", exclude_columns=["user", "ts"])
    props = sent_events(df, mapping)[0]["properties"]
    assert props["Plan Name"] == "A" and props["name"] == "A"
    assert props["at"] == "2024-01-02T03:04:05"  # Mixpanel's date type, UTC, though the session is in LA
    assert props["day"] == "2024-01-02"
    assert props["flag"] is True and props["price"] == 2.5
    assert props["nums"] == [1, 2] and props["m"] == {"k": 1.5}
    assert "ratio" not in props and "blob" not in props and "missing" not in props  # NaN, binary, null
    assert "user" not in props and "ts" not in props


def test_included_columns_never_override_reserved_properties(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", "A", 1_704_164_645, "secret", "b")],
                               "user string, name string, time long, token string, bucket string")
    mapping = MappingConfig(event="name", time="time", distinct_id="user", include_columns="*")
    props = sent_events(df, mapping)[0]["properties"]
    assert props["time"] == 1_704_164_645_000
    assert "token" not in props and "bucket" not in props


@pytest.mark.parametrize(
    ("mapping", "named"),
    [
        (MappingConfig(event="nam", time="ts", distinct_id="user"), "mapping.event"),
        (MappingConfig(event="name", time="ts + ", distinct_id="user"), "mapping.time"),
        (MappingConfig(event="name", time="ts", distinct_id="user", properties={"p": "nope(1)"}),
         "mapping.properties.p"),
        (MappingConfig(event="name", time="ts", distinct_id="user", properties={"token": "name"}),
         "mapping.properties.token"),
        (MappingConfig(event="name", time="ts", distinct_id="user", include_columns=["nope"]),
         "mapping.include_columns"),
        (MappingConfig(event="name", time="array(ts)", distinct_id="user"), "mapping.time"),
    ],
)
def test_mapping_errors_name_the_key(spark: SparkSession, mapping: MappingConfig, named: str) -> None:
    df = spark.createDataFrame([("u1", "A", 1)], "user string, name string, ts long")
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        df.transform(to_mixpanel_events(mapping))


def test_ip_is_zero_unless_mapped(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", "A", 1_704_164_645, "203.0.113.9")],
                               "user string, name string, ts long, addr string")
    assert sent_events(df)[0]["properties"]["ip"] == "0"
    mapped = MappingConfig(event="name", time="ts", distinct_id="user", ip="addr")
    assert sent_events(df, mapped)[0]["properties"]["ip"] == "203.0.113.9"


def test_simplified_id_merge_sends_device_and_user_ids_without_distinct_id(spark: SparkSession) -> None:
    df = spark.createDataFrame([("d-1", "u-1", "A", 1_704_164_645)],
                               "device string, user string, name string, ts long")
    mapping = MappingConfig(event="name", time="ts", device_id="device", user_id="user")
    props = sent_events(df, mapping)[0]["properties"]
    assert (props["$device_id"], props["$user_id"]) == ("d-1", "u-1")
    assert "distinct_id" not in props  # Mixpanel derives it from $user_id / $device_id


@pytest.mark.parametrize("column", ["ip", "$device_id", "$user_id", "distinct_id"])
def test_included_columns_named_like_identity_fields_are_not_sent(spark: SparkSession, column: str) -> None:
    df = spark.createDataFrame([("u1", "A", 1_704_164_645, "x")],
                               f"user string, name string, ts long, `{column}` string")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", include_columns="*")
    props = sent_events(df, mapping)[0]["properties"]
    assert props.get(column) != "x"


def fitted(spark: SparkSession, ddl: str, *values: object) -> tuple[dict, list[str]]:
    """The properties sent for one row with the given extra columns, and the names the job cut."""
    df = spark.createDataFrame([("u1", "A", 1_704_164_645, *values)], f"user string, name string, ts long, {ddl}")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", include_columns="*",
                            exclude_columns=["user", "name", "ts"])
    row = df.transform(to_mixpanel_events(mapping)).transform(to_json_lines).select("line", "cut").first()
    return json.loads(row.line)["properties"], sorted(row.cut)


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("a" * 255, "a" * 255),  # at the limit: untouched
        ("a" * 254 + "é", "a" * 254),  # é is 2 bytes, the 255th and 256th: left out whole
        ("a" * 253 + "😀" + "b", "a" * 253),  # a 4-byte emoji across the limit
        ("€" * 100, "€" * 85),  # 3-byte characters: 85 fit exactly
        ("a" * 252 + "😀" + "b", "a" * 252),  # the emoji is the 253rd-256th byte
        ("שלום " * 60, ("שלום " * 60).encode()[:255].decode("utf-8", "ignore")),  # right-to-left text
    ],
)
def test_strings_are_cut_at_255_bytes_on_a_character_boundary(spark: SparkSession, text: str, kept: str) -> None:
    props, cut = fitted(spark, "s string, items array<string>", text, [text])
    assert props["s"] == kept and props["items"] == [kept]
    assert len(kept.encode()) <= 255
    assert cut == ([] if kept == text else ["items", "s"])


def test_lists_and_maps_keep_254_items_and_big_or_deep_values_are_left_out(spark: SparkSession) -> None:
    many = list(range(300))
    big = ["x" * 200] * 50  # 10 KB of JSON: over the 8 KB a list property may hold
    deep = {"a": {"b": {"c": 1}}}  # three levels of objects: allowed
    props, cut = fitted(
        spark,
        "many array<int>, keys map<string,int>, big array<string>, deep struct<a: struct<b: struct<c: int>>>, "
        "too_deep array<array<array<array<int>>>>, fine array<int>",
        many, {f"k{i}": i for i in range(300)}, big, deep, [[[[1]]]], [1, 2],
    )
    assert props["many"] == many[:254] and len(props["keys"]) == 254
    assert "big" not in props and "too_deep" not in props
    assert props["deep"] == deep and props["fine"] == [1, 2]
    assert cut == ["big", "keys", "many"]  # a structural drop (too_deep) applies to every row: logged, not counted
