"""mapping.spread (properties whose names are in the data), names mapped to null, and exclude_columns patterns."""

import dataclasses
import json

import pytest
from pyspark.sql import DataFrame, SparkSession

from mp_spark.config import ConfigError, MappingConfig, ProfileMappingConfig
from mp_spark.mapping import to_json_lines, to_mixpanel_events
from mp_spark.profiles import to_profile_updates
from tests.conftest import SESSION_ZONES

TS = 1_704_164_645  # 2024-01-02T03:04:05Z


def sent(df: DataFrame, mapping: MappingConfig) -> list[tuple[dict, list[str]]]:
    """Each row's properties as sent, and the names the job cut to fit Mixpanel's limits."""
    rows = df.transform(to_mixpanel_events(mapping)).transform(to_json_lines).select("line", "cut").collect()
    return [(json.loads(row.line)["properties"], sorted(row.cut)) for row in rows]


def test_spread_sends_every_shape_with_its_own_json_types(spark: SparkSession) -> None:
    row = ("u1", "A", TS,
           '{"plan": "pro", "seats": 5, "ratio": 0.5, "beta": true, "tags": ["a", "b"], "geo": {"city": "Oslo"}, '
           '"none": null, "time": 1, "token": "t", "fixed": "no"}',
           {"score": 1.5}, [("color", "red"), ("color", "blue"), ("plan", "enterprise")], ("from-struct", 3))
    df = spark.createDataFrame([row], "user string, name string, ts long, js string, m map<string,double>, "
                                      "kv array<struct<key: string, value: string>>, st struct<label: string, n: int>")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", properties={"fixed": "upper(name)"},
                            spread=["js", "m", "kv", "st", "parse_json('{\"variant\": [1, {\"x\": null}]}')"])
    [(props, cut)] = sent(df, mapping)
    assert props == {
        "time": TS * 1000, "distinct_id": "u1", "$insert_id": props["$insert_id"], "ip": "0",
        "fixed": "A", "label": "from-struct", "n": 3,  # names the schema fixes come first
        "plan": "pro", "seats": 5, "ratio": 0.5, "beta": True, "tags": ["a", "b"], "geo": {"city": "Oslo"},
        "score": 1.5, "color": "red", "variant": [1, {"x": None}],  # the first of a repeated name wins
    }
    assert cut == []


def test_a_name_mapped_to_null_is_never_sent_and_columns_match_exclude_patterns(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", "A", TS, '{"secret": 1, "kept": 2}', "x", "y", "z")],
                               "user string, name string, ts long, js string, context_ip string, "
                               "context_page_url string, plan string")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", spread=["js"],
                            properties={"secret": None, "plan": None, "page": "context_page_url"},
                            include_columns="*", exclude_columns=["user", "ts", "js", "context_*", "nothing_*"])
    [(props, _)] = sent(df, mapping)
    assert {k: v for k, v in props.items() if k not in ("time", "distinct_id", "$insert_id", "ip")} == {
        "page": "y", "name": "A", "kept": 2}


def test_spread_values_are_fitted_to_mixpanel_limits_and_counted_as_cut(spark: SparkSession) -> None:
    long_text, big_list = "é" * 200, list(range(3000))  # 400 bytes of UTF-8; a list of 13 KB of JSON
    js = json.dumps({"long": long_text, "big": big_list, "ok": "fine"})
    many = {f"k{i:03d}": i for i in range(300)}
    df = spark.createDataFrame([("u1", "A", TS, js, many)], "user string, name string, ts long, js string, "
                                                             "many map<string,int>")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", spread=["js", "many"])
    [(props, cut)] = sent(df, mapping)
    assert props["long"] == "é" * 127 and "big" not in props and props["ok"] == "fine"
    # Room is kept for all six of time, distinct_id, $insert_id, $device_id, $user_id and ip: 248 more
    assert len(props) == 4 + 248
    sent_keys, cut_keys = {k for k in props if k in many}, {k for k in cut if k in many}
    assert len(sent_keys) == 246 and sent_keys | cut_keys == set(many) and not sent_keys & cut_keys
    assert set(cut) - cut_keys == {"long", "big"}


def test_derived_insert_id_changes_with_a_spread_value(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", "A", TS, '{"p": 1}'), ("u1", "A", TS, '{"p": 2}'), ("u1", "A", TS, '{"p": 1}')],
                               "user string, name string, ts long, js string")
    ids = [props["$insert_id"] for props, _ in sent(df, MappingConfig(event="name", time="ts", distinct_id="user",
                                                                    spread=["js"]))]
    assert ids[0] == ids[2] != ids[1]


def test_spread_of_another_type_is_a_config_error_naming_the_key(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", "A", TS)], "user string, name string, ts long")
    with pytest.raises(ConfigError, match=r"mapping\.spread\[1\]: a spread must yield"):
        df.transform(to_mixpanel_events(MappingConfig(event="name", time="ts", distinct_id="user",
                                                      spread=["map('a', 1)", "ts"])))


def test_profile_spread_adds_to_set_and_null_names_are_left_out(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", '{"plan": "pro", "$last_seen": "2024-01-01T00:00:00", "seats": 3}')],
                               "id string, props string")
    mapping = ProfileMappingConfig(distinct_id="id", set={"$last_seen": None, "Plan": "upper(get_json_object("
                                                                                     "props, '$.plan'))"},
                                   spread=["props"])
    [update] = [json.loads(row.line) for row in to_profile_updates(mapping)(df).select("line").collect()]
    assert update == {"$distinct_id": "u1", "$ignore_time": True, "$set": {"Plan": "PRO", "plan": "pro", "seats": 3}}


def test_spread_entries_join_lines_whole_whatever_the_characters(spark: SparkSession) -> None:
    """The entries are spliced into the line by bytes: text of several bytes a character, before and in
    them, must come out whole, and an object with nothing mapped gets the entries alone."""
    df = spark.createDataFrame([("ü-1", "Zahlung ok", TS, "Köln 日本", '{"emoji": "🎉", "k": "ß"}')],
                               "user string, name string, ts long, city string, js string")
    events = MappingConfig(event="name", time="ts", distinct_id="user", properties={"city": "city"}, spread=["js"])
    [(props, _)] = sent(df, events)
    assert {k: props[k] for k in ("distinct_id", "city", "emoji", "k")} == {
        "distinct_id": "ü-1", "city": "Köln 日本", "emoji": "🎉", "k": "ß"}
    people = ProfileMappingConfig(distinct_id="user", set={}, spread=["js"])
    [update] = [json.loads(row.line) for row in to_profile_updates(people)(df).select("line").collect()]
    assert update == {"$distinct_id": "ü-1", "$ignore_time": True, "$set": {"emoji": "🎉", "k": "ß"}}


def test_a_name_repeated_in_one_json_object_is_sent_once_with_its_first_value(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", "A", TS, '{"a": 1, "b": 2, "a": 3}')],
                               "user string, name string, ts long, js string")
    [(props, cut)] = sent(df, MappingConfig(event="name", time="ts", distinct_id="user", spread=["js"]))
    assert (props["a"], props["b"], cut) == (1, 2, [])


def test_a_spread_null_in_a_row_leaves_the_other_spreads_and_the_cut_names(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", "A", TS, None, {"kept": "yes"}, "x" * 300)],
                               "user string, name string, ts long, js string, m map<string,string>, long string")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", properties={"long": "long"},
                            spread=["js", "m"])
    [(props, cut)] = sent(df, mapping)
    assert (props["kept"], len(props["long"]), cut) == ("yes", 255, ["long"])
    [(props, cut)] = sent(df, dataclasses.replace(mapping, spread=["js"]))  # the only spread, null
    assert (len(props["long"]), cut) == (255, ["long"])



def test_a_timestamp_inside_a_variant_is_written_alike_in_every_session_zone(spark: SparkSession) -> None:
    df = spark.sql("SELECT 'u1' AS user, 'A' AS name, 1704164645 AS ts, "
                   "to_variant_object(named_struct('at', timestamp'2024-03-10 12:00:00 UTC')) AS extra")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", spread=["extra"])
    before = spark.conf.get("spark.sql.session.timeZone")
    sent_in = {}
    try:
        for zone in SESSION_ZONES:
            spark.conf.set("spark.sql.session.timeZone", zone)
            [(sent_in[zone], _)] = sent(df, mapping)
    finally:
        spark.conf.set("spark.sql.session.timeZone", before)
    assert {props["at"] for props in sent_in.values()} == {"2024-03-10 12:00:00+00:00"}
    # The $insert_id hashes the same text: a rerun on a cluster in another zone sends the same id.
    assert len({props["$insert_id"] for props in sent_in.values()}) == 1


def test_a_variant_property_is_fitted_to_mixpanels_limits_as_a_spreads_values_are(spark: SparkSession) -> None:
    big = json.dumps({f"k{i}": "v" * 40 for i in range(300)})  # about 14 KB
    df = spark.createDataFrame([("u1", "A", TS, big, "é" * 200, '{"a": 1}')],
                               "user string, name string, ts long, big string, long string, small string")
    df = df.selectExpr("user", "name", "ts", "parse_json(big) AS big", "parse_json(small) AS small",
                       "parse_json(to_json(named_struct('s', long))):s AS long")  # a VARIANT string
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", include_columns=["big", "long", "small"])
    [(props, cut)] = sent(df, mapping)
    assert "big" not in props and props["small"] == {"a": 1}  # over 8 KB: left out of this event
    assert len(props["long"].encode()) <= 255 and props["long"] == "é" * 127
    assert cut == ["big", "long"]
