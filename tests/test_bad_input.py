"""Messy lake data end to end: every row is sent as meant or set aside with a reason, and Mixpanel's
strict validation refuses nothing the job chose to send."""

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from tests.fake_mixpanel import FakeMixpanel
from tests.test_backfill_e2e import run_job, summary_of

NOW = dt.datetime.now(dt.timezone.utc)
WHEN = dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
WIDE = 300  # columns w0..w299: null except in the "wide" row
TEN_KB = "x" * 10_240
MIXED_TEXT = "emoji 😀, right-to-left שלום עולם, a NUL \x00 inside"
SCHEMA = ", ".join([
    "event_name string, user_id string, ts timestamp, score double, text string, amount decimal(38,18)",
    "blob binary, day date, seen_at timestamp, `col with space` string, `dotted.name` string",
    "token string, bucket string, `$ignore` boolean, ip string, time string, distinct_id string",
    "nested struct<a: struct<b: int>>, deep struct<a: struct<b: struct<c: struct<d: int>>>>",
    "items array<int>, attrs map<string,string>",
    *[f"w{i} int" for i in range(WIDE)],
])
TYPICAL = {
    "user_id": "u1", "ts": WHEN, "score": 1.5, "text": "plain",
    "amount": Decimal("12345678901234567890.123456789012345678"),
    "blob": bytearray(b"\x00\xff"), "day": dt.date(2024, 1, 2), "seen_at": WHEN, "col with space": "spaced",
    "dotted.name": "dotted", "token": "not-the-token", "bucket": "b", "$ignore": True, "ip": "203.0.113.9",
    "time": "not the time", "distinct_id": "not the id",
    "nested": {"a": {"b": 1}}, "deep": {"a": {"b": {"c": {"d": 1}}}},
    "items": [1, 2, 3], "attrs": {"k": "v"},
}
# event name -> what changes from TYPICAL; each row's event name says what it tests
SENT = {
    "typical": {},
    "nan": {"score": float("nan")},
    "infinity": {"score": float("inf")},
    "minus infinity": {"score": float("-inf")},
    "10 KB string": {"text": TEN_KB},
    "emoji, RTL and NUL": {"text": MIXED_TEXT},
    "300 items and 300 keys": {"items": list(range(300)), "attrs": {f"k{i}": "v" for i in range(300)}},
    "duplicate": {},
}
INVALID = {  # event name -> (changes, the field of the reason)
    "no id": ({"user_id": None}, "distinct_id"),
    "placeholder id": ({"user_id": "Anonymous"}, "distinct_id"),
    "no time": ({"ts": None}, "time"),
    "future": ({"ts": NOW + dt.timedelta(days=2)}, "time"),
    "before 1971": ({"ts": dt.datetime(1960, 1, 1, tzinfo=dt.timezone.utc)}, "time"),
    "wide": ({f"w{i}": i for i in range(WIDE)}, "properties"),
}


def source_rows() -> list[dict]:
    rows = [{**TYPICAL, "event_name": name, **changes} for name, changes in SENT.items()]
    rows.append({**TYPICAL, "event_name": "duplicate"})  # the same row twice: Mixpanel keeps one
    rows += [{**TYPICAL, "event_name": name, **changes} for name, (changes, _field) in INVALID.items()]
    rows.append({**TYPICAL, "event_name": None})  # no event name
    return rows


@pytest.mark.connect
def test_messy_rows_are_sent_as_documented_or_set_aside_with_a_reason(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    columns = spark.createDataFrame([], SCHEMA).columns
    rows = [tuple(row.get(c) for c in columns) for row in source_rows()]
    source = tmp_path / "messy"
    spark.createDataFrame(rows, SCHEMA).write.parquet(str(source))
    config = {
        "source": {"format": "parquet", "path": str(source)},
        "mapping": {"event": "event_name", "time": "ts", "distinct_id": "user_id", "include_columns": "*",
                    "exclude_columns": ["event_name", "ts", "user_id"]},
        "mixpanel": {"project_id": mixpanel.project_id, "api_host": mixpanel.url},
        "job": {"records_per_partition": 1000, "results_path": str(tmp_path / "results")},
    }
    (tmp_path / "messy.json").write_text(json.dumps(config))

    assert run_job(str(tmp_path / "messy.json")) == 1  # some rows were set aside

    summary = summary_of(tmp_path)
    sent = len(SENT) + 1
    assert (summary["rows_read"], summary["imported"], summary["rejected"], summary["invalid"]) == (
        len(rows), sent, 0, len(INVALID) + 1)
    assert mixpanel.rejected == []  # strict validation refused nothing the job sent
    assert summary["trimmed"] == 2  # the 10 KB string; the 300 items and keys

    reasons = {}
    for row in spark.read.json(str(tmp_path / "results" / "rejected")).collect():
        assert row.stage == "validation" and row.message
        reasons[json.loads(row.event)["event"] if json.loads(row.event).get("event") else None] = row.field
    assert reasons == {**{name: field for name, (_c, field) in INVALID.items()}, None: "event"}

    received = {e["event"]: e["properties"] for e in mixpanel.unique_events.values()}
    assert set(received) == set(SENT) and len(mixpanel.unique_events) == sent - 1
    typical = received["typical"]
    assert typical["time"] == int(WHEN.timestamp() * 1000) and typical["distinct_id"] == "u1"
    assert typical["ip"] == "0"  # the `ip` column is not the event's address: mapping.ip was not set
    assert typical["amount"] == 12345678901234567890.123456789012345678  # a JSON number
    assert (typical["day"], typical["seen_at"]) == ("2024-01-02", "2024-01-02T03:04:05")
    assert (typical["col with space"], typical["dotted.name"]) == ("spaced", "dotted")
    assert typical["nested"] == {"a": {"b": 1}} and typical["deep"] == {"a": {"b": {}}}  # cut below 3 levels
    assert (typical["items"], typical["attrs"], typical["score"]) == ([1, 2, 3], {"k": "v"}, 1.5)
    for left_out in ("blob", "token", "bucket", "$ignore"):
        assert left_out not in typical
    assert ("not sending binary values (Mixpanel has no type for bytes: map hex(col) or base64(col) instead): blob"
            in caplog.messages)
    assert "w0" not in typical  # nulls are not sent
    for name in ("nan", "infinity", "minus infinity"):
        assert "score" not in received[name]
    assert received["10 KB string"]["text"] == "x" * 255
    assert received["emoji, RTL and NUL"]["text"] == MIXED_TEXT
    assert len(received["300 items and 300 keys"]["items"]) == len(received["300 items and 300 keys"]["attrs"]) == 254


def test_a_binary_column_named_in_mapping_properties_stops_the_run_before_any_request(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "blobs"
    spark.createDataFrame([("u1", "A", WHEN, bytearray(b"\x00"))],
                          "user_id string, event_name string, ts timestamp, blob binary").write.parquet(str(source))
    config = {
        "source": {"format": "parquet", "path": str(source)},
        "mapping": {"event": "event_name", "time": "ts", "distinct_id": "user_id", "properties": {"Blob": "blob"}},
        "mixpanel": {"project_id": mixpanel.project_id, "api_host": mixpanel.url},
        "job": {"results_path": str(tmp_path / "results")},
    }
    (tmp_path / "blobs.json").write_text(json.dumps(config))

    assert run_job(str(tmp_path / "blobs.json")) == 2  # a config error

    error = capsys.readouterr().err
    assert "mapping.properties.Blob is binary" in error and "hex(...) or base64(...)" in error
    assert mixpanel.requests == 0
