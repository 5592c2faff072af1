import pytest
from pyspark.sql import SparkSession

from mp_spark.config import MappingConfig
from mp_spark.mapping import to_json_lines, to_mixpanel_events
from mp_spark.preview import Preview, PropertyProfile, preview_events


def test_preview_profiles_properties_and_samples_events(spark: SparkSession) -> None:
    rows = [(f"u{i % 3}", "Signup", 1_704_164_645 + i, "x" * (300 if i == 0 else 5), None if i % 2 else 1.5)
            for i in range(10)]
    df = spark.createDataFrame(rows, "user string, name string, ts long, note string, score double")
    mapped = df.transform(to_mixpanel_events(MappingConfig(event="name", time="ts", distinct_id="user",
                                                           include_columns=["note", "score"])))
    preview = preview_events(mapped, mapped.transform(to_json_lines), samples=3)

    assert len(preview.samples) == 3 and preview.samples[0]["event"] == "Signup"
    by_name = {p.name: p for p in preview.properties}
    assert set(by_name) == {"note", "score"}
    assert (by_name["note"].json_type, by_name["note"].cut) == ("string", 1)
    assert (by_name["score"].json_type, by_name["score"].null_share) == ("number", pytest.approx(0.5))
    assert preview.approx_event_names == 1
    assert preview.busiest_user_day == 4  # u0 has rows 0, 3, 6 and 9, all on one day
    assert any("'note' is cut in 1 of 10 rows" in w and "255 bytes" in w for w in preview.warnings())
    assert "events as they would be sent" in preview.render()


def test_preview_warns_about_ids_as_properties_too_many_event_names_and_hot_shards() -> None:
    preview = Preview(samples=[], rows=10_000, approx_event_names=6_000, properties=[
        PropertyProfile("order_id", "string", 0.0, 9_900), PropertyProfile("plan", "string", 0.0, 3)],
        busiest_user_day=250_000)
    warnings = preview.warnings()
    assert len(warnings) == 3
    assert "6,000 distinct event names" in warnings[0] and "'order_id'" in warnings[1]
    assert "$hotshard_events" in warnings[2]
    assert Preview([], 10, 1, [], busiest_user_day=200_000).warnings() == []
