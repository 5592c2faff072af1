"""Mapping presets (mapping.preset): expansion and overrides without Spark, each vendor's fixture end to end.

The fixtures under tests/data/presets/ follow each vendor's documented export schema; their expected.jsonl
files were written from those documents (docs/presets.md lists them), not captured from the job's output.
"""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml
from pyspark.sql import SparkSession

from mp_spark.cli import main
from mp_spark.config import Config, ConfigError, parse_config
from mp_spark.mapping import to_json_lines, to_mixpanel_events
from mp_spark.presets import COMMON_OPTIONS, PRESETS, prepare_source, render_mapping
from mp_spark.profiles import to_profile_updates
from tests.fake_mixpanel import FakeMixpanel
from tests.test_backfill_e2e import run_job, summary_of

# The GA4 BigQuery export's columns (support.google.com/analytics/answer/7029846) as Spark types, for
# writing the fixture as the Parquet a lake holds.
GA4_VALUE = "string_value: string, int_value: bigint, float_value: double, double_value: double"
GA4_SCHEMA = ", ".join([
    "event_date string", "event_timestamp bigint", "event_name string",
    f"event_params array<struct<key: string, value: struct<{GA4_VALUE}>>>",
    "event_previous_timestamp bigint", "event_value_in_usd double", "event_bundle_sequence_id bigint",
    "event_server_timestamp_offset bigint", "user_id string", "user_pseudo_id string",
    "privacy_info struct<analytics_storage: string, ads_storage: string, uses_transient_token: string>",
    f"user_properties array<struct<key: string, value: struct<{GA4_VALUE}, set_timestamp_micros: bigint>>>",
    "user_first_touch_timestamp bigint", "user_ltv struct<revenue: double, currency: string>",
    "device struct<category: string, mobile_brand_name: string, mobile_model_name: string, "
    "mobile_marketing_name: string, mobile_os_hardware_model: string, operating_system: string, "
    "operating_system_version: string, vendor_id: string, advertising_id: string, language: string, "
    "is_limited_ad_tracking: string, time_zone_offset_seconds: bigint, browser: string, browser_version: string, "
    "web_info: struct<browser: string, browser_version: string, hostname: string>>",
    "geo struct<city: string, country: string, continent: string, region: string, sub_continent: string, "
    "metro: string>",
    "app_info struct<id: string, version: string, install_store: string, firebase_app_id: string, "
    "install_source: string>",
    "traffic_source struct<name: string, medium: string, source: string>", "stream_id string", "platform string",
    "event_dimensions struct<hostname: string>",
    "ecommerce struct<total_item_quantity: bigint, purchase_revenue: double, transaction_id: string>",
    "items array<struct<item_id: string, item_name: string, item_brand: string, item_variant: string, "
    "item_category: string, price: double, quantity: bigint, item_revenue: double>>",
    "collected_traffic_source struct<manual_campaign_id: string, manual_campaign_name: string, "
    "manual_source: string, manual_medium: string, manual_term: string, manual_content: string, gclid: string, "
    "dclid: string, srsltid: string>",
    "is_active_user boolean",
])

# A Segment warehouse's per-event table (segment.com/docs/connections/storage/warehouses/schema/): Segment's
# own columns, context flattened to context_*, the event's properties as columns (lists as JSON text).
SEGMENT_TABLE_SCHEMA = ", ".join([
    "id string", "anonymous_id string", "user_id string", "event string", "event_text string", "timestamp timestamp",
    "received_at timestamp", "sent_at timestamp", "original_timestamp timestamp", "uuid_ts timestamp",
    *[f"context_{name} string" for name in ("ip", "library_name", "library_version", "page_path", "page_referrer",
                                             "page_search", "page_title", "page_url", "user_agent", "locale",
                                             "campaign_source", "campaign_medium", "campaign_name")],
    "order_id string", "total double", "revenue double", "currency string", "coupon string", "products string",
    "discount double",
])

# PostHog's S3 batch export, events model, as Parquet (posthog.com/docs/cdp/batch-exports/s3): properties and
# person_properties as JSON text. Reading the JSON-lines fixture with this schema keeps each object's text.
POSTHOG_PARQUET_SCHEMA = ("uuid string, event string, distinct_id string, person_id string, properties string, "
                          "person_properties string, elements_chain string, timestamp timestamp, created_at timestamp, "
                          "_inserted_at timestamp")


FIXTURES = Path(__file__).parent / "data" / "presets"


def golden(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line]


def parse(mapping: dict, kind: str = "events") -> Config:
    return parse_config(json.dumps({"source": {"format": "json", "path": "/lake/events"}, "mapping": mapping,
                                    "job": {"kind": kind}}))


# --- expansion: pure, no Spark ----------------------------------------------------------------------------

def test_a_preset_fills_the_mapping_and_the_users_keys_override_it_key_by_key() -> None:
    mapping = parse({"preset": "amplitude", "user_id": "lower(user_id)", "ip": "ip_address",
                     "properties": {"plan": "user_properties.plan", "$carrier": None}}).mapping
    assert (mapping.event, mapping.time, mapping.device_id) == ("event_type", "event_time", "device_id")  # the preset's
    assert (mapping.user_id, mapping.ip) == ("lower(user_id)", "ip_address")  # the user's, replacing or adding
    assert mapping.properties["plan"] == "user_properties.plan"  # properties merge name by name ...
    assert mapping.properties["$city"] == "city"
    assert mapping.properties["$carrier"] is None  # ... and null removes one the preset sends
    assert mapping.spread == ["event_properties", "groups", "user_properties"]
    assert parse({"preset": "amplitude", "spread": ["event_properties"]}).mapping.spread == ["event_properties"]


@pytest.mark.parametrize(("mapping", "kind", "message"), [
    ({"preset": "heap"}, "events",
     "mapping.preset must be one of amplitude, segment, ga4, posthog, mixpanel, got 'heap'"),
    ({"preset": "ga4"}, "people", "mapping.preset: ga4 has no mapping for job.kind: people (it has events)"),
    ({"preset": "ga4", "preset_options": {"skip_session_start": True}}, "events",
     "unknown key mapping.preset_options.skip_session_start"),
    ({"preset": "segment", "preset_options": {"shape": "redshift"}}, "events",
     "mapping.preset_options.shape must be one of s3, warehouse, got 'redshift'"),
    ({"preset": "posthog", "preset_options": {"skip_internal_events": "yes"}}, "events",
     "mapping.preset_options.skip_internal_events must be bool, got 'yes'"),
    ({"preset": "mixpanel", "preset_options": {"project_timezone": "Mars/Olympus"}}, "events",
     "mapping.preset_options.project_timezone must be a time zone"),
])
def test_unknown_presets_and_options_are_config_errors_that_name_the_choices(mapping: dict, kind: str,
                                                                             message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse(mapping, kind)


PRESET_KINDS = [(name, kind) for name, preset in PRESETS.items() for kind in preset.kinds]


@pytest.mark.parametrize(("name", "kind"), PRESET_KINDS)
def test_a_saved_expanded_mapping_parses_to_the_same_config_on_resume(name: str, kind: str) -> None:
    config = parse({"preset": name, "properties" if kind == "events" else "set": {"extra": "1", "$city": None}},
                   kind)
    saved = json.dumps(dataclasses.asdict(config))  # what run.json holds
    assert parse_config(saved) == config


@pytest.mark.parametrize(("name", "kind"), PRESET_KINDS)
def test_the_rendered_mapping_is_yaml_that_gives_the_same_mapping(name: str, kind: str) -> None:
    config = parse({"preset": name, "preset_options": {"skip_internal_events": True}}, kind)
    text = render_mapping(config.mapping)
    assert text.startswith(f"mapping from preset {name} (your mapping.* keys override it):\n")
    assert parse(yaml.safe_load(text.split("\n", 1)[1])["mapping"], kind).mapping == config.mapping


def test_without_a_preset_nothing_is_rendered_and_the_source_is_left_as_it_is() -> None:
    config = parse({"event": "e", "time": "t", "distinct_id": "u"})
    assert render_mapping(config.mapping) == ""
    assert prepare_source(config)("the source") == "the source"


@pytest.mark.parametrize(("name", "kind"), PRESET_KINDS)
def test_the_users_override_of_any_preset_key_wins(name: str, kind: str) -> None:
    named = "properties" if kind == "events" else "set"
    preset = PRESETS[name].build(kind, {**COMMON_OPTIONS, **PRESETS[name].options}).mapping
    first_name = next(iter(preset.get(named) or {"mp_lib": "x"}))
    key = "event" if kind == "events" else "distinct_id"
    mapping = parse({"preset": name, key: "'overridden'", named: {first_name: None, "added": "'by the user'"}},
                    kind).mapping
    assert getattr(mapping, key) == "'overridden'"
    assert getattr(mapping, named)[first_name] is None and getattr(mapping, named)["added"] == "'by the user'"


# --- each vendor's fixture, as it lands in a lake, end to end through the fake Mixpanel ---------------------

@pytest.fixture(scope="module")
def lake(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The fixtures as the vendors' exports land: GA4, PostHog and a Segment warehouse table as Parquet, the
    Amplitude, Segment S3 and Mixpanel exports as the JSON lines they are."""
    root = tmp_path_factory.mktemp("lake")
    for name, schema, source in (("ga4", GA4_SCHEMA, "ga4/events.jsonl"),
                                 ("posthog", POSTHOG_PARQUET_SCHEMA, "posthog/events.jsonl"),
                                 ("segment_warehouse", SEGMENT_TABLE_SCHEMA, "segment/order_completed.jsonl")):
        spark.read.schema(schema).json(str(FIXTURES / source)).write.parquet(str(root / name))
    return {"ga4": str(root / "ga4"), "posthog": str(root / "posthog"),
            "segment_warehouse": str(root / "segment_warehouse"), "amplitude": str(FIXTURES / "amplitude/events.json"),
            "segment": str(FIXTURES / "segment/s3.json"), "mixpanel": str(FIXTURES / "mixpanel/export.json")}


def write_config(tmp_path: Path, source: dict, mapping: dict, server: FakeMixpanel, kind: str = "events") -> str:
    config = {"source": source, "mapping": mapping,
              "mixpanel": {"project_id": server.project_id, "api_host": server.url},
              "job": {"kind": kind, "results_path": str(tmp_path / "results")}}
    target = tmp_path / "preset.json"
    target.write_text(json.dumps(config))
    return str(target)


def by_identity(event: dict) -> tuple:
    p = event["properties"]
    return event["event"], p["time"], p.get("$insert_id", ""), str(p.get("$device_id")), str(p.get("$user_id"))


E2E = [  # (lake source, format, mapping, golden file, rows set aside as invalid)
    pytest.param("ga4", "parquet", {"preset": "ga4"}, "ga4/expected.jsonl", 0, id="ga4"),
    pytest.param("amplitude", "json", {"preset": "amplitude"}, "amplitude/expected.jsonl", 0, id="amplitude",
                 marks=pytest.mark.connect),  # spreads of JSON objects, on Connect too
    # identify, group and alias calls are not events: invalid (null event) unless skip_internal_events
    pytest.param("segment", "json", {"preset": "segment"}, "segment/expected.jsonl", 3, id="segment-s3"),
    pytest.param("segment_warehouse", "parquet", {"preset": "segment", "preset_options": {"shape": "warehouse"}},
                 "segment/expected_warehouse.jsonl", 0, id="segment-warehouse"),
    pytest.param("posthog", "parquet", {"preset": "posthog"}, "posthog/expected.jsonl", 0, id="posthog",
                 marks=pytest.mark.connect),  # a spread of a VARIANT, on Connect too
    pytest.param("mixpanel", "json", {"preset": "mixpanel"}, "mixpanel/expected.jsonl", 0, id="mixpanel"),
]


@pytest.mark.parametrize(("lake_key", "source_format", "mapping", "expected", "invalid"), E2E)
def test_a_vendors_export_arrives_as_the_golden_events(
    lake: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    lake_key: str, source_format: str, mapping: dict, expected: str, invalid: int,
) -> None:
    config = write_config(tmp_path, {"format": source_format, "path": lake[lake_key]}, mapping, mixpanel)

    assert run_job(config) == (1 if invalid else 0)

    want = golden(expected)
    got = list(mixpanel.unique_events.values())
    if mapping["preset"] == "ga4":  # GA4 has no event id: the preset hashes the fields that tell events apart
        ids = [event["properties"].pop("$insert_id") for event in got]
        assert len(set(ids)) == len(got) and all(re.fullmatch("[0-9a-f]{36}", i) for i in ids)
    assert sorted(got, key=by_identity) == sorted(want, key=by_identity)
    summary = summary_of(tmp_path)
    assert (summary["imported"], summary["invalid"]) == (len(want), invalid)


def test_the_ga4_insert_id_does_not_depend_on_the_sessions_json_settings(spark: SparkSession) -> None:
    """A rerun on a session that writes null fields must give each event the id it had."""
    params = [{"key": "page_title", "value": {"string_value": "Home", "int_value": None, "float_value": None,
                                             "double_value": None}}]
    df = spark.createDataFrame([("p1", 1_704_164_645_000_000, "page_view", 7, params)],
                               f"user_pseudo_id string, event_timestamp bigint, event_name string, "
                               f"event_bundle_sequence_id bigint, event_params array<struct<key: string, "
                               f"value: struct<{GA4_VALUE}>>>")
    insert_id = parse({"preset": "ga4"}).mapping.insert_id
    ids = []
    for ignore_null_fields in ("true", "false"):
        spark.conf.set("spark.sql.jsonGenerator.ignoreNullFields", ignore_null_fields)
        try:
            ids.append(df.selectExpr(insert_id).first()[0])
        finally:
            spark.conf.unset("spark.sql.jsonGenerator.ignoreNullFields")
    assert ids[0] == ids[1] and re.fullmatch("[0-9a-f]{36}", ids[0])


def test_amplitude_people_preset_sets_each_users_properties_from_their_latest_event(
    lake: dict[str, str], mixpanel: FakeMixpanel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    monkeypatch.setenv("MP_PROJECT_TOKEN", "tok-123")  # profile updates carry the project token
    config = write_config(tmp_path, {"format": "json", "path": lake["amplitude"]}, {"preset": "amplitude"}, mixpanel,
                          kind="people")

    assert run_job(config) == 0

    assert mixpanel.profiles == {p["$distinct_id"]: p["$set"] for p in golden("amplitude/expected_profiles.jsonl")}


@pytest.mark.parametrize(("name", "source"), [("posthog", "posthog/persons.jsonl"),
                                             ("mixpanel", "mixpanel/profiles.json")])
def test_posthog_persons_and_mixpanel_profiles_become_the_golden_updates(spark: SparkSession, name: str,
                                                                        source: str) -> None:
    config = parse({"preset": name}, "people")
    updates = to_profile_updates(config.mapping)(
        spark.read.json(str(FIXTURES / source)).transform(prepare_source(config)))
    got = [json.loads(row.line) for row in updates.select("line").collect()]
    assert sorted(got, key=lambda u: u["$distinct_id"]) == sorted(
        golden(source.replace(source.split("/")[1], "expected_profiles.jsonl")), key=lambda u: u["$distinct_id"])


def test_skip_internal_events_leaves_out_only_the_vendors_bookkeeping(spark: SparkSession,
                                                                      lake: dict[str, str]) -> None:
    left_out = {  # what each vendor documents as its own bookkeeping (docs/presets.md)
        "ga4": {"first_visit", "session_start"},
        "amplitude": {"$identify", "$groupidentify", "[Amplitude] Start Session", "[Amplitude] End Session"},
        "segment": set(),  # its identify, group and alias calls have no event name at all
        "posthog": {"$identify", "$groupidentify", "$set"},
        "mixpanel": {"$identify"},
    }
    for name, skipped in left_out.items():
        fmt = "parquet" if name in ("ga4", "posthog") else "json"
        config = parse({"preset": name, "preset_options": {"skip_internal_events": True}})
        mapped = spark.read.format(fmt).load(lake[name]).transform(prepare_source(config)).transform(
            to_mixpanel_events(config.mapping))
        names = [row.event for row in mapped.select("event").collect()]
        want = [e["event"] for e in golden(f"{name}/expected.jsonl") if e["event"] not in skipped]
        assert sorted(names) == sorted(want), name


def test_posthog_json_lines_shape_and_an_older_ga4_export_need_no_other_config(spark: SparkSession,
                                                                               lake: dict[str, str]) -> None:
    posthog = parse({"preset": "posthog"})
    schema = POSTHOG_PARQUET_SCHEMA.replace("properties string", "properties variant")  # objects, as JSON lines
    lines = spark.read.schema(schema).json(str(FIXTURES / "posthog/events.jsonl")).transform(
        prepare_source(posthog)).transform(to_mixpanel_events(posthog.mapping)).transform(to_json_lines)
    got = [json.loads(row.line) for row in lines.select("line").collect()]
    assert sorted(got, key=by_identity) == sorted(golden("posthog/expected.jsonl"), key=by_identity)

    ga4 = parse({"preset": "ga4"})
    older = spark.read.parquet(lake["ga4"]).drop("collected_traffic_source", "user_properties", "items")
    events = older.transform(prepare_source(ga4)).transform(to_mixpanel_events(ga4.mapping)).transform(to_json_lines)
    properties = [json.loads(row.line)["properties"] for row in events.select("line").collect()]
    assert len(properties) == 21 and not any("utm_source" in p or "plan" in p or "items" in p for p in properties)


def test_mixpanel_project_timezone_turns_a_local_export_time_into_utc(spark: SparkSession) -> None:
    config = parse({"preset": "mixpanel", "preset_options": {"project_timezone": "Europe/Lisbon"}})
    rows = [("E", '{"time": 1719222000, "distinct_id": "u1", "$insert_id": "a1"}'),  # 2024-06-24 09:40, summer: UTC+1
            ("E", '{"time": 1704103200, "distinct_id": "u1", "$insert_id": "a2"}')]  # 2024-01-01 10:00, winter: UTC
    mapped = spark.createDataFrame(rows, "event string, properties string").transform(
        prepare_source(config)).transform(to_mixpanel_events(config.mapping))
    assert [row.time for row in mapped.select("time").collect()] == [1_719_218_400_000, 1_704_103_200_000]


def test_a_dry_run_prints_the_mapping_the_preset_gave(
    lake: dict[str, str], mixpanel: FakeMixpanel, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, {"format": "parquet", "path": lake["segment_warehouse"]},
                          {"preset": "segment", "preset_options": {"shape": "warehouse"}}, mixpanel)

    assert main(["--config", config, "--dry-run"]) == 0

    out = capsys.readouterr().out
    mapping_text = out.split("mapping from preset segment (your mapping.* keys override it):\n")[1].split("\n#")[0]
    assert yaml.safe_load(mapping_text)["mapping"]["preset_options"]["shape"] == "warehouse"
    assert out.index("mapping from preset segment") < out.index("events as they would be sent")
    assert mixpanel.requests == 0


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "conf" / "presets").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_each_example_config_parses_to_its_preset(path: Path) -> None:
    assert parse_config(path.read_text()).mapping.preset == path.stem
