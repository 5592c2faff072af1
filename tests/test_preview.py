import time

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mp_spark import executor
from mp_spark.config import Config, MappingConfig, SourceConfig
from mp_spark.preview import Preview, Previewer, PropertyProfile, fingerprint_table
from mp_spark.records import prepare_events
from tests.test_mapping import DST_WALL_CLOCKS, mixpanel_date, utc_ms


def preview_of(source: DataFrame, mapping: MappingConfig, sample_rows: int = 100_000) -> Preview:
    """The preview a dry run shows, from what its sending tasks would pass on: every line, and the
    profile column's values."""
    shown: list[Preview] = []
    config = Config(SourceConfig(format="parquet", path="unused"), mapping)
    records = prepare_events(source, config, int(time.time() * 1000))
    previewer = Previewer(shown.append, sample_rows)
    rows = records.count()
    passed_on = records.select(F.when(F.col("invalid").isNull(), F.col("line")).alias("line"),
                               previewer.profile_column(records, config, rows).alias("profile")).toArrow()
    lines = [line for line in passed_on["line"].to_pylist() if line is not None]
    previewer.show(records, config, rows, lines, passed_on.filter(pc.is_valid(passed_on["profile"]))["profile"])
    (preview,) = shown
    return preview


def test_preview_profiles_properties_and_samples_events(spark: SparkSession) -> None:
    rows = [(f"u{i % 3}", "Signup", 1_704_164_645 + i, "x" * (300 if i == 0 else 5), None if i % 2 else 1.5)
            for i in range(10)]
    df = spark.createDataFrame(rows, "user string, name string, ts long, note string, score double")
    preview = preview_of(df, MappingConfig(event="name", time="ts", distinct_id="user",
                                           include_columns=["note", "score"]))

    assert len(preview.samples) == 10 and preview.samples[0]["event"] == "Signup"
    by_name = {p.name: p for p in preview.properties}
    assert set(by_name) == {"note", "score"}
    assert (by_name["note"].json_type, by_name["note"].cut) == ("string", 1)
    assert (by_name["score"].json_type, by_name["score"].null_share) == ("number", pytest.approx(0.5))
    assert preview.approx_event_names == 1
    assert preview.busiest_user_day == 4  # u0 has rows 0, 3, 6 and 9, all on one day
    assert any("'note' is cut in 1 of 10 rows" in w and "255 bytes" in w for w in preview.warnings())
    assert "events as they would be sent" in preview.render()


def test_a_preview_calls_dates_and_times_mixpanels_date_type(spark: SparkSession) -> None:
    """They are sent as text, which Mixpanel reads as its date type."""
    df = spark.sql("SELECT 'u1' AS user, 'Signup' AS name, 1704164645 AS ts, DATE'2024-01-02' AS day, "
                   "TIMESTAMP'2024-01-02 03:04:05' AS at, TIMESTAMP_NTZ'2024-01-02 03:04:05' AS wall")
    preview = preview_of(df, MappingConfig(event="name", time="ts", distinct_id="user",
                                           include_columns=["day", "at", "wall"]))
    assert {p.name: p.json_type for p in preview.properties} == {"day": "date", "at": "date", "wall": "date"}


def test_a_preview_profiles_maps_and_variants_which_spark_cannot_hash(spark: SparkSession) -> None:
    rows = [("u1", "Signup", 1_704_164_645, '{"plan": "pro"}', {"k": 1}),
            ("u2", "Signup", 1_704_164_646, "[1, 2]", None)]
    df = spark.createDataFrame(rows, "user string, name string, ts long, doc string, tags map<string,int>")
    df = df.select("user", "name", "ts", F.parse_json("doc").alias("payload"), "tags")
    mapping = MappingConfig(event="name", time="ts", distinct_id="user", include_columns=["payload", "tags"])
    preview = preview_of(df, mapping)
    by_name = {p.name: p for p in preview.properties}
    assert by_name["payload"].approx_distinct == 2 and by_name["tags"].null_share == pytest.approx(0.5)
    assert (by_name["payload"].json_type, by_name["tags"].json_type) == ("any", "object")


def test_a_preview_of_no_rows_says_nothing_would_be_sent_and_shows_no_empty_profile() -> None:
    empty = Preview(samples=[], rows=0, approx_event_names=0, properties=[PropertyProfile("plan", "string", 0.0, 0)])
    assert empty.render() == "nothing would be sent"
    two = Preview(samples=[{"event": "a"}, {"event": "a"}], rows=2, approx_event_names=1, properties=[
        PropertyProfile("plan", "string", 0.0, 1)], of_rows=2)
    assert two.render().splitlines()[3:] == [
        "properties over 2 rows:", f"  {'name':<28}{'type':<9}{'null':>7}{'distinct':>12}{'cut':>10}",
        f"  {'plan':<28}{'string':<9}{'0%':>7}{'1':>12}{'0':>10}"]


def test_preview_warns_about_ids_as_properties_too_many_event_names_and_hot_shards() -> None:
    preview = Preview(samples=[], rows=10_000, approx_event_names=6_000, properties=[
        PropertyProfile("order_id", "string", 0.0, 9_900), PropertyProfile("plan", "string", 0.0, 3)],
        busiest_user_day=250_000)
    warnings = preview.warnings()
    assert len(warnings) == 3
    assert "6,000 distinct event names" in warnings[0] and "'order_id'" in warnings[1]
    assert "$hotshard_events" in warnings[2]
    assert Preview([], 10, 1, [], busiest_user_day=200_000).warnings() == []


def test_preview_samples_and_busiest_day_are_utc_in_every_session_zone(
    spark: SparkSession, session_zone: str,
) -> None:
    # u1's two events are on two UTC days but one local day in every other zone tested; u2's three
    # are on one UTC day but two local days in each of them; u3's are days apart. Each event carries
    # a time in a DST gap or overlap.
    times = [("u1", "2024-01-02 23:30:00"), ("u1", "2024-01-03 00:30:00"),
             ("u2", "2024-01-05 00:10:00"), ("u2", "2024-01-05 12:00:00"), ("u2", "2024-01-05 23:50:00"),
             ("u3", "2024-02-01 12:00:00"), ("u3", "2024-02-03 12:00:00"), ("u3", "2024-02-05 12:00:00")]
    rows = [(user, wall, gap) for (user, wall), gap in zip(times, DST_WALL_CLOCKS, strict=True)]
    df = spark.createDataFrame(rows, "user string, wall string, gap string").select(
        "user", "wall", "gap", F.col("wall").cast("timestamp_ntz").alias("at"),
        F.col("gap").cast("timestamp_ntz").alias("in_gap"))
    mapping = MappingConfig(event="'Signup'", time="at", distinct_id="user", include_columns=["wall", "gap", "in_gap"])
    preview = preview_of(df, mapping)

    assert preview.busiest_user_day == 3
    assert sorted(sample["properties"]["gap"] for sample in preview.samples) == sorted(DST_WALL_CLOCKS)
    for sample in preview.samples:
        props = sample["properties"]
        assert (props["time"], props["in_gap"]) == (utc_ms(props["wall"]), mixpanel_date(props["gap"]))


def test_preview_shows_what_no_event_will_carry(spark: SparkSession) -> None:
    df = spark.createDataFrame([("u1", 1_704_164_645, bytearray(b"\x00"), [[[[1]]]], "x")],
                               "user string, ts long, blob binary, deep array<array<array<array<int>>>>, plan string")
    preview = preview_of(df, MappingConfig(event="'Signup'", time="ts", distinct_id="user",
                                           include_columns=["blob", "deep", "plan"]))

    assert [p.name for p in preview.properties] == ["plan"]
    assert preview.warnings() == [
        "not sending binary values (Mixpanel has no type for bytes: map hex(col) or base64(col) instead): blob",
        "not sending values nested deeper than 3 levels or beyond 254 fields: deep",
    ]
    assert "warning: not sending binary values" in preview.render()


def test_a_big_source_is_profiled_from_a_sample_and_the_busiest_day_scaled_up(spark: SparkSession) -> None:
    # 4,000 events of one user on one UTC day, and a sample of about 1,200 of them (over the 1,000 rows
    # that a cardinality warning needs).
    df = spark.range(4000).select(F.lit("u1").alias("user"), (F.lit(1_704_164_645) + F.col("id")).alias("ts"),
                                  F.col("id").cast("string").alias("order_id"))
    preview = preview_of(df, MappingConfig(event="'Purchase'", time="ts", distinct_id="user",
                                           include_columns=["order_id"]), sample_rows=1200)

    assert 1000 < preview.rows < 1400 and preview.of_rows == 4000 and preview.sampled
    assert 3000 < preview.busiest_user_day < 5000  # about 1,200 in the sample, for 4,000 in all
    assert "properties over a sample of" in preview.render() and "of 4,000 rows" in preview.render()
    assert any("'order_id'" in w and "an id?" in w for w in preview.warnings())  # all distinct in the sample too


@pytest.mark.parametrize("text_type", [pa.string(), pa.large_string()])  # large with useLargeVarTypes
def test_profile_lines_travel_joined_in_rows_of_bounded_size(text_type: pa.DataType,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor, "PROFILE_ROW_BYTES", 10)
    lines = pa.array(["1,2\n", "3,4\n", "5,6\n", "77,88\n", "9,\n"], text_type)  # 4, 4, 4, 6 and 4 bytes

    rows = executor.profile_rows(7, lines)

    assert rows.column("profile").to_pylist() == ["1,2\n3,4\n5,6\n", "77,88\n9,\n"]
    assert rows.column("record").to_pylist() == ["profile"] * 2 and rows.column("index").to_pylist() == [7, 7]
    assert fingerprint_table(pa.chunked_array([rows.column("profile")]), 2).num_rows == 5


def test_fingerprint_table_reads_the_profile_lines_as_numbers() -> None:
    lines = pa.chunked_array([["1,,-9223372036854775808\n", ",,\n"], ["9223372036854775807,0,7\n"]])
    assert fingerprint_table(lines, 3).to_pylist() == [
        {"0": 1, "1": None, "2": -2**63}, {"0": None, "1": None, "2": None}, {"0": 2**63 - 1, "1": 0, "2": 7}]
    none = fingerprint_table(pa.chunked_array([], pa.string()), 3)
    assert none.num_rows == 0 and none.schema.types == [pa.int64()] * 3
