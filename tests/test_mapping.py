import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mp_spark.config import ConfigError, MappingConfig, SourceConfig
from mp_spark.mapping import JSON_OPTIONS, to_epoch_ms, to_json_lines, to_mixpanel_events
from mp_spark.sources import read_source

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


@pytest.mark.parametrize("text", ["2024-01-02T03:04Z", "2024-01-02T05:04+02:00", "2024-01-02t03:04:00z",
                                  " 2024-01-02T03:04:00Z ", "2024-01-02T03:04 UTC", " 1704164640 "])
def test_iso_forms_spark_does_not_cast_are_read_too(spark: SparkSession, session_zone: str, text: str) -> None:
    df = spark.createDataFrame([("u1", "Signup", text)], "user string, name string, ts string")
    assert sent_events(df)[0]["properties"]["time"] == 1_704_164_640_000  # 2024-01-02T03:04:00Z


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
    # The ids these rows had before and after 2026-12-07's splice of the content: a change to the bytes
    # hashed re-ids every event, and a rerun after an upgrade would be kept twice.
    assert first[:2] == ["4b53089e98ecb37794f41ced25c6057a2a3b", "7b04cec79a19844fcdd29c4bd949521629c2"]
    assert all(len(i) <= 36 and i.replace("-", "").isalnum() for i in first)


def test_mapped_insert_id_is_kept_when_valid_and_rehashed_when_not(spark: SparkSession) -> None:
    rows = [("u1", "A", 1, "order-17"), ("u1", "A", 1, "order_17/with:bad chars"), ("u1", "A", 1, None),
            ("u1", "A", 1, "Null"), ("u1", "A", 1, "order-17\n")]
    df = spark.createDataFrame(rows, "user string, name string, ts long, oid string")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", insert_id="oid")
    ids = [e["properties"]["$insert_id"] for e in sent_events(df, mapping)]
    assert ids[0] == "order-17"
    assert len(ids[1]) == 36 and ids[1].isalnum()
    assert len(ids[2]) == 36 and ids[2] != ids[1]
    assert len(ids[3]) == 36 and ids[3].isalnum()  # a placeholder Mixpanel refuses
    assert len(ids[4]) == 36 and ids[4] not in (ids[0], ids[1])  # a trailing newline breaks Mixpanel's rule too


@pytest.mark.parametrize("no_id", ["", "  ", "null", "0", "N/A"])
def test_an_empty_or_placeholder_mapped_id_falls_back_to_the_content_hash(spark: SparkSession, no_id: str) -> None:
    rows = [("u1", "buy", 1_704_164_645, 10.0, no_id), ("u1", "buy", 1_704_168_245, 25.0, no_id)]
    df = spark.createDataFrame(rows, "user string, name string, ts long, amount double, oid string")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", insert_id="oid", include_columns=["amount"])
    unmapped = MappingConfig(event="name", time="ts", distinct_id="user", include_columns=["amount"])
    ids = [e["properties"]["$insert_id"] for e in sent_events(df, mapping)]
    # Two purchases an hour apart: one id for both would have Mixpanel keep only one of them.
    assert ids[0] != ids[1]
    assert ids == [e["properties"]["$insert_id"] for e in sent_events(df.drop("oid"), unmapped)]


@pytest.mark.parametrize(
    "mapping",
    [
        MappingConfig(event="name", time="ts", distinct_id="user", device_id="device", include_columns="*",
                      exclude_columns=["extra"]),
        MappingConfig(event="name", time="ts", distinct_id="user",
                      spread=["extra", "from_json(doc, 'map<string,string>')"]),
        MappingConfig(event="name", time="ts", distinct_id="user", include_columns=[]),
    ],
    ids=["columns", "spread", "no properties"],
)
def test_the_content_hash_reads_what_to_json_writes_for_the_whole_event(spark: SparkSession,
                                                                       mapping: MappingConfig) -> None:
    """The content is spliced from JSON written once; its bytes (so every derived $insert_id, and a
    rerun's deduplication) must be those of the event's fields written as one struct."""
    rows = [
        ("u1", "Ünïcode ✓ \"quoted\"", 1_704_164_645, "d1", "a\nb", 1.5, Decimal("2.50"), dt.date(2024, 1, 2),
         ["x", "y"], {"k": 1}, '{"plan": "pro", "n": "1"}'),
        (None, None, None, None, None, None, None, None, None, None, None),
        ("u2", "", 1_704_164_645, None, "", float("nan"), None, None, [], {}, "{}"),
    ]
    df = spark.createDataFrame(rows, "user string, name string, ts long, device string, note string, score double, "
                                     "price decimal(10,2), day date, tags array<string>, extra map<string,int>, "
                                     "doc string")
    mapped = df.transform(to_mixpanel_events(mapping))
    fields = ["event", "time", "distinct_id", "device_id", "user_id", "properties"]
    whole = F.to_json(F.struct(*fields, *(["spread"] if "spread" in mapped.columns else [])), JSON_OPTIONS)
    checked = mapped.select("insert_id", F.substring(F.sha2(whole, 256), 1, 36).alias("expected")).collect()
    assert len(checked) == 3
    assert all(row.insert_id == row.expected for row in checked), checked


def test_the_content_hash_does_not_depend_on_the_sessions_json_settings(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", "A", 1_704_164_645, None)], "user string, name string, ts long, p string")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", include_columns=["p"])
    default = sent_events(df, mapping)[0]["properties"]["$insert_id"]
    spark.conf.set("spark.sql.jsonGenerator.ignoreNullFields", "false")
    try:
        assert sent_events(df, mapping)[0]["properties"]["$insert_id"] == default
    finally:
        spark.conf.unset("spark.sql.jsonGenerator.ignoreNullFields")


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


def test_properties_named_as_mixpanels_time_or_distinct_id_are_never_sent(spark: SparkSession) -> None:
    """Mixpanel reads `$time` and `$distinct_id` as the event's own: found in a spread or a column, they
    would contend with the mapped time and distinct_id."""
    doc = '{"$time": 1.7e9, "$distinct_id": "x", "k": 1}'
    df = spark.createDataFrame([("u1", "A", 1_704_164_645, 1.7e9, "other", doc)],
                               "user string, name string, ts long, `$time` double, `$distinct_id` string, doc string")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", include_columns=["$time", "$distinct_id"],
                            spread=["parse_json(doc)"])
    props = sent_events(df, mapping)[0]["properties"]
    assert props["time"] == 1_704_164_645_000 and props["distinct_id"] == "u1" and props["k"] == 1
    assert "$time" not in props and "$distinct_id" not in props
    named = MappingConfig(event="name", time="ts", distinct_id="user", properties={"$time": "ts"})
    with pytest.raises(ConfigError, match=r"mapping\.properties\.\$time: .* set it with mapping\.time$"):
        sent_events(df, named)


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


def test_a_column_name_with_a_backtick_or_a_dot_is_sent_under_its_name(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", "A", 1_704_164_645, "x", "y")],
                               "user string, name string, ts long, `odd``name` string, `page.url` string")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", include_columns="*")
    props = sent_events(df, mapping)[0]["properties"]
    assert props["odd`name"] == "x" and props["page.url"] == "y"


def test_ip_is_zero_unless_mapped(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", "A", 1_704_164_645, "203.0.113.9")],
                               "user string, name string, ts long, addr string")
    assert sent_events(df)[0]["properties"]["ip"] == "0"
    mapped = MappingConfig(event="name", time="ts", distinct_id="user", ip="addr")
    assert sent_events(df, mapped)[0]["properties"]["ip"] == "203.0.113.9"
    # A row without one: "0" still, or Mixpanel would place the event where the cluster is.
    assert sent_events(df.withColumn("addr", F.lit(None).cast("string")), mapped)[0]["properties"]["ip"] == "0"


@pytest.mark.parametrize(("ddl", "value"), [
    ("ts double", float("nan")), ("ts double", float("inf")), ("ts double", 1e20),
    ("ts string", "99999999999999999999999"), ("ts decimal(38,0)", Decimal(10**30)),
])
def test_a_time_beyond_any_epoch_is_no_time_not_a_failed_job(spark: SparkSession, ddl: str, value: object) -> None:
    df = spark.createDataFrame([("u1", "A", value)], f"user string, name string, {ddl}")
    events = df.transform(to_mixpanel_events(MAPPING)).select("time").collect()
    assert events[0].time is None  # set aside by validation as an event without a time


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


def test_a_lists_size_is_that_of_the_json_sent_whatever_the_sessions_json_settings(spark: SparkSession) -> None:
    """Null fields are not sent, so they do not count towards the 8 KB, even where the session's own
    to_json would write them."""
    nulls = ", ".join(f"n{i}: string" for i in range(10))
    doc = {"items": ["x" * 200] * 40, **{f"n{i}": None for i in range(10)}}  # 8,131 bytes sent; 8,231 with the nulls
    spark.conf.set("spark.sql.jsonGenerator.ignoreNullFields", "false")
    try:
        props, cut = fitted(spark, f"doc struct<items: array<string>, {nulls}>", doc)
    finally:
        spark.conf.unset("spark.sql.jsonGenerator.ignoreNullFields")
    assert props["doc"] == {"items": ["x" * 200] * 40} and cut == []


def test_a_maps_date_and_time_keys_are_sent_as_utc_text_in_every_session_zone(spark: SparkSession,
                                                                           session_zone: str) -> None:
    """Spark's to_json writes such keys as the days and microseconds it holds ("19724")."""
    instant = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    props, cut = fitted(spark, "at map<timestamp, int>, wall map<timestamp_ntz, int>, day map<date, int>",
                        {instant: 1, instant + dt.timedelta(microseconds=250_000): 2},
                        {dt.datetime(2024, 1, 2, 3, 4, 5): 3}, {dt.date(2024, 1, 2): 4, dt.date(1, 1, 1): 5})
    assert props["at"] == {"2024-01-02T03:04:05": 1, "2024-01-02T03:04:05.25": 2}
    assert props["wall"] == {"2024-01-02T03:04:05": 3} and props["day"] == {"2024-01-02": 4, "0001-01-01": 5}
    assert cut == []


def test_dates_are_sent_as_they_are_under_the_legacy_time_parser(spark: SparkSession) -> None:
    """Its calendar writes 1582-10-05 as 1582-10-15: a value would be wrong, and one map with both keys
    would fail the query."""
    spark.conf.set("spark.sql.legacy.timeParserPolicy", "LEGACY")
    try:
        props, _ = fitted(spark, "day map<date, int>, born date",
                          {dt.date(1582, 10, 5): 1, dt.date(1582, 10, 15): 2}, dt.date(1582, 10, 5))
    finally:
        spark.conf.unset("spark.sql.legacy.timeParserPolicy")
    assert props["day"] == {"1582-10-05": 1, "1582-10-15": 2} and props["born"] == "1582-10-05"


# UTC wall clocks that, read as local times of a session zone, do not exist or exist twice.
DST_WALL_CLOCKS = [
    "2013-03-10 02:30:00",  # Los Angeles: gap (02:00 -> 03:00)
    "2013-11-03 01:30:00",  # Los Angeles: overlap (01:00-02:00 twice)
    "2013-03-31 02:30:00",  # Berlin: gap
    "2013-10-27 02:30:00",  # Berlin: overlap
    "2013-10-06 02:15:00",  # Lord Howe: gap of 30 minutes (02:00 -> 02:30)
    "2014-04-06 01:45:00",  # Lord Howe: overlap (01:30-02:00 twice)
    "2011-12-30 12:00:00",  # Apia: the whole day was skipped
    "2013-03-10 02:30:00.999999",  # a fraction of a second: dropped from the text, kept in `time` (floored)
]
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def wall_clock_rows(spark: SparkSession, wall_clocks: list[str]) -> DataFrame:
    """One row per UTC wall clock: as text (`wall`), timestamp_ntz (`ntz`) and timestamp (`instant`).

    Built without the session's zone: a string cast to timestamp_ntz is a wall clock, and a string
    that names its zone is an instant.
    """
    df = spark.createDataFrame([(w,) for w in wall_clocks], "wall string")
    return df.select("wall", F.col("wall").cast("timestamp_ntz").alias("ntz"),
                     F.concat("wall", F.lit("Z")).cast("timestamp").alias("instant"))


def mixpanel_date(wall: str) -> str:
    """Mixpanel's date type for a UTC wall clock: YYYY-MM-DDTHH:MM:SS, no fraction, no zone."""
    return wall.replace(" ", "T")[:19]


def utc_ms(wall: str) -> int:
    """A UTC wall clock as epoch milliseconds, floored (as Spark's unix_millis floors)."""
    return (dt.datetime.fromisoformat(wall).replace(tzinfo=dt.timezone.utc) - EPOCH) // dt.timedelta(milliseconds=1)


def test_temporal_properties_are_utc_text_at_every_level_in_every_session_zone(
    spark: SparkSession, session_zone: str
) -> None:
    rows = wall_clock_rows(spark, DST_WALL_CLOCKS).select(
        F.lit("u1").alias("user"), F.lit("A").alias("name"), F.lit(1_704_164_645).alias("ts"), "wall", "ntz",
        "instant", F.array("ntz").alias("ntz_list"), F.array("instant").alias("instant_list"),
        F.struct("ntz", "instant").alias("object"), F.create_map(F.lit("at"), "instant").alias("by_name"),
    )
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", include_columns="*",
                            exclude_columns=["user", "name", "ts"])
    sent = [event["properties"] for event in sent_events(rows, mapping)]
    assert sorted(props["wall"] for props in sent) == sorted(DST_WALL_CLOCKS)
    for props in sent:
        want = mixpanel_date(props["wall"])
        assert (props["ntz"], props["instant"]) == (want, want)
        assert (props["ntz_list"], props["instant_list"]) == ([want], [want])
        assert props["object"] == {"ntz": want, "instant": want} and props["by_name"] == {"at": want}


def test_time_is_the_same_instant_in_every_session_zone(spark: SparkSession, session_zone: str) -> None:
    def in_india(wall: str) -> str:  # the same instant written with a +05:30 offset
        local = dt.datetime.fromisoformat(wall) + dt.timedelta(hours=5, minutes=30)
        return local.isoformat() + "+05:30"

    rows = spark.createDataFrame([(w, in_india(w)) for w in DST_WALL_CLOCKS], "wall string, india string")
    rows = rows.select("*", F.col("wall").cast("timestamp_ntz").alias("ntz"),
                       F.concat("wall", F.lit("Z")).cast("timestamp").alias("instant"))
    forms = {  # mapping.time -> what its epoch ms must be, from the UTC wall clock
        "ntz": utc_ms,
        "instant": utc_ms,
        "wall": utc_ms,  # an ISO string without a zone: UTC
        "replace(wall, ' ', 'T')": utc_ms,
        "concat(wall, 'Z')": utc_ms,
        "india": utc_ms,
        "concat(wall, ' UTC')": utc_ms,
        "to_date(wall)": lambda wall: utc_ms(wall[:10]),  # a date: midnight UTC
        "substr(wall, 1, 10)": lambda wall: utc_ms(wall[:10]),
    }
    mappings = [MappingConfig(event="'e'", time=expression, distinct_id="'u'") for expression in forms]
    got = rows.select("wall", F.array(*[to_epoch_ms(rows, m) for m in mappings]).alias("ms")).collect()
    for row in got:
        assert dict(zip(forms, row.ms, strict=True)) == {e: want(row.wall) for e, want in forms.items()}, row.wall


def test_a_time_string_that_names_a_region_is_read_in_that_region(spark: SparkSession, session_zone: str) -> None:
    rows = spark.createDataFrame([("2024-07-01 12:00:00 America/New_York",), ("2024-07-01T12:00:00 Europe/Berlin",)],
                                 "text string")
    mapping = MappingConfig(event="'e'", time="text", distinct_id="'u'")
    got = [row.ms for row in rows.select(to_epoch_ms(rows, mapping).alias("ms")).collect()]
    assert got == [utc_ms("2024-07-01 16:00:00"), utc_ms("2024-07-01 10:00:00")]


@pytest.mark.parametrize(("year", "text"), [
    (1, "0001"), (99, "0099"), (999, "0999"), (9999, "9999"),  # four digits, zero-padded
    (0, None), (-1, None), (10000, None),  # no four-digit form: left out
])
def test_years_outside_1_to_9999_are_left_out_and_others_have_four_digits(
    spark: SparkSession, session_zone: str, year: int, text: str | None
) -> None:
    rows = spark.sql(f"""SELECT 'u1' AS user, 'A' AS name, 1704164645 AS ts,
        make_timestamp_ntz({year}, 12, 31, 23, 59, 59.999999) AS ntz,
        make_timestamp({year}, 12, 31, 23, 59, 59.999999, 'UTC') AS instant,
        make_date({year}, 12, 31) AS day""")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", include_columns=["ntz", "instant", "day"])
    props = sent_events(rows, mapping)[0]["properties"]
    sent = {name: props.get(name) for name in ("ntz", "instant", "day")}
    if text is None:
        assert sent == {"ntz": None, "instant": None, "day": None}
    else:
        assert sent == {"ntz": f"{text}-12-31T23:59:59", "instant": f"{text}-12-31T23:59:59", "day": f"{text}-12-31"}


def test_binary_named_in_mapping_properties_is_a_config_error_that_says_how_to_send_it(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", "A", 1_704_164_645, bytearray(b"\x00\xff"))],
                               "user string, name string, ts long, blob binary")
    named = MappingConfig(event="name", time="ts", distinct_id="user", properties={"Payload": "blob"})
    with pytest.raises(ConfigError, match=r"^mapping\.properties\.Payload is binary.*hex\(.*base64\("):
        df.transform(to_mixpanel_events(named))
    as_hex = MappingConfig(event="name", time="ts", distinct_id="user", properties={"Payload": "hex(blob)"})
    assert sent_events(df, as_hex)[0]["properties"]["Payload"] == "00FF"


def test_binary_reached_through_include_columns_or_nesting_is_left_out_with_a_warning(
    spark: SparkSession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="mp_spark.mapping"):
        props, cut = fitted(
            spark, "blob binary, file struct<name: string, raw: binary>, blobs array<binary>, "
                   "by_name map<string, binary>, by_bytes map<binary, int>, fine array<int>",
            bytearray(b"\x00"), {"name": "a.png", "raw": bytearray(b"\x89PNG")}, [bytearray(b"\x01")],
            {"k": bytearray(b"\x02")}, {b"\x03": 1}, [1],
        )
    assert set(props) - {"time", "distinct_id", "$insert_id", "ip"} == {"file", "fine"} and cut == []
    assert props["file"] == {"name": "a.png"}
    assert [r.getMessage() for r in caplog.records] == [
        "not sending binary values (Mixpanel has no type for bytes: map hex(col) or base64(col) instead): "
        "blob, file.raw, blobs, by_name, by_bytes"]


def test_a_json_time_without_a_zone_read_as_a_timestamp_is_utc_in_every_session_zone(
    spark: SparkSession, session_zone: str, tmp_path: Path,
) -> None:
    (tmp_path / "events.json").write_text('{"at": "2013-03-10T02:30:00"}\n{"at": "2013-03-10T02:30:00Z"}\n')
    source = read_source(spark, SourceConfig(format="json", path=str(tmp_path), schema="at timestamp"))
    assert [row.ms for row in source.select(F.unix_millis("at").alias("ms")).collect()] == [
        utc_ms("2013-03-10 02:30:00")] * 2
