"""job.mode incremental end to end: real Delta tables and files that grow between runs, the real CLI,
Structured Streaming on real Spark, and the Mixpanel-compatible server on loopback."""

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mp_spark.cli import main
from mp_spark.config import parse_config
from mp_spark.incremental import changed_rows
from tests.fake_mixpanel import FakeMixpanel, Faults
from tests.test_backfill_e2e import job_process, wait_until


def rows(spark: SparkSession, first: int, count: int) -> DataFrame:
    """`count` source rows with ids from `first` on: each a distinct event."""
    return spark.range(first, first + count).select(
        F.col("id"),
        F.format_string("user-%03d", F.col("id") % 41).alias("user_id"),
        F.when(F.col("id") % 2 == 0, "Page View").otherwise("Purchase").alias("event_name"),
        F.timestamp_seconds(F.lit(1_717_200_000) + F.col("id") * 61).alias("ts"),
        F.when(F.col("id") % 3 == 0, "pro").otherwise("free").alias("plan"),
    )


def write_config(tmp_path: Path, server: FakeMixpanel, source: dict, **job: object) -> str:
    config = {
        "source": source,
        "mapping": {"event": "event_name", "time": "ts", "distinct_id": "user_id", "insert_id": "concat('row-', id)",
                    "properties": {"plan": "plan", "row": "id"}},
        "mixpanel": {"project_id": server.project_id, "api_host": server.url, "max_batch_events": 200},
        "job": {"mode": "incremental", "records_per_partition": 250, "results_path": str(tmp_path / "results"),
                **job},
    }
    target = tmp_path / "incremental.json"
    target.write_text(json.dumps(config))
    return str(target)


def delta_table_config(tmp_path: Path, server: FakeMixpanel, first_rows: DataFrame) -> str:
    """A Delta table of `first_rows` at tmp_path/events, and an incremental config that reads it."""
    table = str(tmp_path / "events")
    first_rows.write.format("delta").save(table)
    return write_config(tmp_path, server, {"format": "delta", "path": table})


def run(config: str, *overrides: str) -> int:
    args = ["--config", config]
    for override in overrides:
        args += ["--set", override]
    return main(args)


def summary(tmp_path: Path) -> dict:
    (part,) = (tmp_path / "results" / "summary").glob("part-*")
    return json.loads(part.read_text())


def commits(tmp_path: Path) -> list[str]:
    """The micro-batches the stream's checkpoint has committed (its default place under results/)."""
    found = list((tmp_path / "results" / "checkpoints").glob("events-*/commits/[0-9]*"))
    return sorted(path.name for path in found)


def stopped_by_sigterm(job: subprocess.Popen, until: Callable[[], None]) -> int:
    """Once `until` returns, SIGTERM the job (a scheduler stopping it), and its exit code."""
    try:
        until()
        job.send_signal(signal.SIGTERM)
        return job.wait(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)


def sent_ids(server: FakeMixpanel) -> list[int]:
    return sorted(event["properties"]["row"] for event in server.unique_events.values())


def add_files(spark: SparkSession, df: DataFrame, fmt: str, target: Path, scratch: Path) -> None:
    """Add `df` to a directory that a stream reads, as a lake's writer would: each file appears whole."""
    df.write.format(fmt).save(str(scratch))
    target.mkdir(exist_ok=True)
    for part in scratch.glob("part-*"):
        os.replace(part, target / f"{scratch.name}-{part.name}")
    shutil.rmtree(scratch)


@pytest.mark.connect
def test_a_delta_table_that_grows_is_sent_once_run_by_run(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = delta_table_config(tmp_path, mixpanel, rows(spark, 0, 600))

    assert run(config) == 0
    assert sent_ids(mixpanel) == list(range(600))
    first = summary(tmp_path)
    assert first["mode"] == "incremental" and first["rows_read"] == first["imported"] == 600
    assert len(first["micro_batches"]) == 1 and first["micro_batches"][0]["imported"] == 600
    (read,) = first["micro_batches"][0]["sources"]
    assert read["start"] is None and read["end"]["reservoirVersion"] == 1  # just after commit 0, the first

    rows(spark, 600, 150).write.format("delta").mode("append").save(str(tmp_path / "events"))
    arrived_before = mixpanel.raw_arrivals
    assert run(config) == 0
    second = summary(tmp_path)
    assert second["rows_read"] == second["imported"] == 150
    assert mixpanel.raw_arrivals - arrived_before == 150 + 1  # the new rows, and the driver's credentials check
    assert sent_ids(mixpanel) == list(range(750))
    assert commits(tmp_path) == ["0", "1"]

    requests_before = mixpanel.requests
    capsys.readouterr()
    assert run(config) == 0
    assert "nothing new since 20" in capsys.readouterr().out
    assert mixpanel.requests == requests_before
    assert summary(tmp_path)["nothing_new_since"].startswith("20")


def test_sigterm_with_a_backlog_stops_after_the_running_micro_batch_and_the_next_run_sends_the_rest(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    """Back-to-back micro-batches leave no idle moment to stop in: the stop comes as one ends."""
    source = tmp_path / "landing"
    for i in range(4):
        add_files(spark, rows(spark, i * 50, 50).coalesce(1), "parquet", source, tmp_path / f"file{i}")
    config = write_config(tmp_path, mixpanel, {"format": "parquet", "path": str(source)}, max_files_per_batch=1)
    mixpanel.set_faults(Faults(latency_s=1.0))  # each micro-batch takes a few seconds
    log = tmp_path / "job.log"
    job = job_process(config, log)

    def first_batch_sent() -> None:
        wait_until(lambda: mixpanel.raw_arrivals > 1 or job.poll() is not None, 300, "the first micro-batch")

    assert stopped_by_sigterm(job, first_batch_sent) == 0, log.read_text()
    assert 1 <= len(commits(tmp_path)) < 4, log.read_text()
    assert "Traceback" not in log.read_text()  # the micro-batch the stop cut short is not an error of the job's
    assert summary(tmp_path)["imported"] == 50 * len(commits(tmp_path))  # what was committed, counted

    mixpanel.set_faults(Faults())
    assert run(config) == 0  # the rest, from where the stream stopped
    assert sent_ids(mixpanel) == list(range(200))
    assert commits(tmp_path) == ["0", "1", "2", "3"]


def test_a_landing_directory_without_files_yet_is_nothing_new_given_its_schema(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "landing"
    source.mkdir()
    config = write_config(tmp_path, mixpanel, {"format": "parquet", "path": str(source)})
    assert run(config) == 2  # nothing to infer a schema from
    assert "no files there yet? source.schema gives their schema" in capsys.readouterr().err

    schema = "id bigint, user_id string, event_name string, ts timestamp, plan string"
    assert run(config, f"source.schema={schema}") == 0
    assert "nothing new since never" in capsys.readouterr().out
    add_files(spark, rows(spark, 0, 30), "parquet", source, tmp_path / "first")
    assert run(config, f"source.schema={schema}") == 0
    assert sent_ids(mixpanel) == list(range(30))


def test_a_delete_in_the_table_stops_the_stream_with_what_to_set_and_that_setting_goes_on(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = delta_table_config(tmp_path, mixpanel, rows(spark, 0, 40))
    assert run(config) == 0
    table = str(tmp_path / "events")
    spark.sql(f"DELETE FROM delta.`{table}` WHERE id = 5")  # a GDPR erasure, say
    rows(spark, 40, 10).write.format("delta").mode("append").save(table)
    capsys.readouterr()

    assert run(config) == 2
    assert "set source.skip_change_commits: true" in capsys.readouterr().err
    requests = mixpanel.requests
    assert run(config, "source.skip_change_commits=true") == 0  # from the stream's place, not from the start
    assert sent_ids(mixpanel) == list(range(50))
    assert summary(tmp_path)["rows_read"] == 10 and mixpanel.requests - requests == 1 + 1  # the check, the rows


def test_a_zone_less_starting_timestamp_is_utc_whatever_the_session_zone(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    """Delta reads a zone-less time in the session's zone: 8 hours off in the tests' Los Angeles,
    which would start the stream after commits it should send (or at none at all)."""
    config = delta_table_config(tmp_path, mixpanel, rows(spark, 0, 20))
    time.sleep(1.5)  # Delta's commit times are the clock's
    between = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="milliseconds")
    time.sleep(1.5)
    rows(spark, 20, 30).write.format("delta").mode("append").save(str(tmp_path / "events"))
    assert spark.conf.get("spark.sql.session.timeZone") != "UTC"

    assert run(config, f"source.starting_timestamp={between}") == 0  # the commits from then on
    assert sent_ids(mixpanel) == list(range(20, 50))
    as_of = ["job.mode=backfill", f"source.timestamp={between}", f"job.results_path={tmp_path / 'as-of'}"]
    assert run(config, *as_of) == 0  # the table as it was then
    assert sent_ids(mixpanel) == list(range(50))


@pytest.mark.parametrize("fmt", ["parquet", pytest.param("json", marks=pytest.mark.connect)])
def test_new_files_are_sent_and_old_ones_are_not_sent_again(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path, fmt: str,
) -> None:
    source = tmp_path / "landing"
    add_files(spark, rows(spark, 0, 300).repartition(3), fmt, source, tmp_path / "day1")
    config = write_config(tmp_path, mixpanel, {"format": fmt, "path": str(source)}, max_files_per_batch=2)

    assert run(config) == 0
    assert sent_ids(mixpanel) == list(range(300))
    assert len(summary(tmp_path)["micro_batches"]) == 2  # 3 files, at most 2 a micro-batch

    add_files(spark, rows(spark, 300, 100), fmt, source, tmp_path / "day2")
    assert run(config) == 0
    assert summary(tmp_path)["imported"] == 100
    assert sent_ids(mixpanel) == list(range(400))


def test_a_new_checkpoint_keeps_its_micro_batches_results_beside_the_old_streams(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    """A changed source (or a deleted checkpoint) numbers its micro-batches from 0 again: with the same
    results_path, its batch 0 must not replace the old stream's batch 0 (its rejected rows among them)."""
    source = tmp_path / "landing"
    add_files(spark, rows(spark, 0, 100), "parquet", source, tmp_path / "day1")
    config = write_config(tmp_path, mixpanel, {"format": "parquet", "path": str(source)})
    assert run(config) == 0
    first = summary(tmp_path)
    assert run(config, f"job.checkpoint_path={tmp_path / 'checkpoint[2]'}") == 0  # read as written, not as a glob
    second = summary(tmp_path)
    assert first["stream_id"] != second["stream_id"]
    batch_runs = {}
    for stream in (first, second):
        (part,) = (tmp_path / "results" / "batches" / f"stream={stream['stream_id']}" / "batch=0" / "summary").glob(
            "part-*")
        batch_runs[stream["stream_id"]] = json.loads(part.read_text())["run_id"]
    assert batch_runs == {first["stream_id"]: f"{first['run_id']}-batch0",
                          second["stream_id"]: f"{second['run_id']}-batch0"}
    assert sent_ids(mixpanel) == list(range(100))


def test_pacing_learned_from_429s_carries_over_to_the_next_micro_batch(
    spark: SparkSession, service_account: None, tmp_path: Path,
) -> None:
    source = tmp_path / "landing"
    add_files(spark, rows(spark, 0, 2400).repartition(2), "parquet", source, tmp_path / "day1")
    with FakeMixpanel(admit_events_per_second=400) as server:
        config = write_config(tmp_path, server, {"format": "parquet", "path": str(source)}, max_files_per_batch=1)
        assert run(config, "mixpanel.rate_limit_events_per_second=400", "mixpanel.max_in_flight=4",
                   "mixpanel.max_batch_events=100", "mixpanel.max_attempts=100", "mixpanel.backoff_initial_s=0.1",
                   "mixpanel.jitter_min_s=0", "mixpanel.jitter_max_s=0.1", "job.records_per_partition=600") == 0
        assert sent_ids(server) == list(range(2400))

    retries = [json.loads(next((tmp_path / "results" / "batches").glob(f"stream=*/batch={i}/summary/part-*"))
                          .read_text())["retries"] for i in (0, 1)]
    # The first micro-batch meets the limit (4-6 429s); the second starts at the rate the first learned (0)
    # where, starting afresh, it met as many as the first.
    assert retries[0] >= 2 and retries[1] <= retries[0] // 2, retries


def test_the_change_feed_sends_inserted_rows_only(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    table = str(tmp_path / "events")
    rows(spark, 0, 200).write.format("delta").option("delta.enableChangeDataFeed", "true").save(table)
    config = write_config(tmp_path, mixpanel, {"format": "delta", "path": table, "change_feed": True})
    assert run(config) == 0
    assert sent_ids(mixpanel) == list(range(200))

    spark.sql(f"UPDATE delta.`{table}` SET plan = 'enterprise' WHERE id < 50")
    spark.sql(f"DELETE FROM delta.`{table}` WHERE id >= 150")
    rows(spark, 200, 30).write.format("delta").mode("append").save(table)
    arrived_before = mixpanel.raw_arrivals
    assert run(config) == 0

    assert summary(tmp_path)["imported"] == 30
    assert mixpanel.raw_arrivals - arrived_before == 30 + 1  # and the credentials check
    assert sent_ids(mixpanel) == list(range(230))
    assert all(event["properties"]["plan"] != "enterprise" for event in mixpanel.unique_events.values())


def test_a_profile_change_feed_keeps_each_keys_latest_row_and_every_row_without_a_key(spark: SparkSession) -> None:
    rows = [
        ("u1", "free", "insert", 1), ("u1", "pro", "update_postimage", 2), ("u1", "free", "update_preimage", 2),
        ("u2", "a", "insert", 3), ("u2", "b", "insert", 3),  # one key twice in one commit
        (None, "x", "insert", 3), (None, "y", "insert", 4),
    ]
    config = parse_config(json.dumps({
        "source": {"format": "delta", "path": "unused", "change_feed": True},
        "mapping": {"distinct_id": "user_id", "set": {"plan": "plan"}},
        "job": {"kind": "people", "mode": "incremental"}}))

    def latest(in_order: list[tuple]) -> list[tuple]:
        feed = spark.createDataFrame(in_order, "user_id string, plan string, _change_type string, "
                                               "_commit_version long").coalesce(1).select(
            "*", F.timestamp_seconds(F.col("_commit_version") + 1_717_200_000).alias("_commit_timestamp"),
            F.create_map(F.lit("k"), F.col("plan")).alias("attributes"),  # a map: a type Spark does not hash
            F.parse_json(F.lit('{"a": 1}')).alias("extra"))  # nor a VARIANT
        return sorted((r.user_id or "", r.plan) for r in changed_rows(feed, config).collect())

    first = latest(rows)
    assert [row for row in first if row[0] != "u2"] == [("", "x"), ("", "y"), ("u1", "pro")]
    assert len([row for row in first if row[0] == "u2"]) == 1
    assert latest(rows[::-1]) == first  # the same of the two, in whatever order a rerun reads them


@pytest.mark.connect
def test_wrong_credentials_exit_2_before_the_stream_commits_anything(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    config = delta_table_config(tmp_path, mixpanel, rows(spark, 0, 300))
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_SECRET", "not-the-secret")

    assert run(config) == 2
    assert mixpanel.requests == mixpanel.statuses[401] == 1
    error = capsys.readouterr().err
    assert "401" in error and "run the job again" in error and "not-the-secret" not in error
    assert commits(tmp_path) == []

    monkeypatch.setenv("MP_SERVICE_ACCOUNT_SECRET", "sa-secret")
    assert run(config) == 0
    assert sent_ids(mixpanel) == list(range(300))


def test_a_batch_whose_sending_failed_exits_3_and_is_sent_by_the_next_run(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    config = delta_table_config(tmp_path, mixpanel, rows(spark, 0, 300))
    mixpanel.set_faults(Faults(rate_5xx=1.0))
    fast_retries = ["mixpanel.max_attempts=2", "mixpanel.backoff_initial_s=0.01", "mixpanel.jitter_min_s=0",
                    "mixpanel.jitter_max_s=0", "mixpanel.check_credentials=false"]

    assert run(config, *fast_retries) == 3
    assert commits(tmp_path) == []

    mixpanel.set_faults(Faults())
    assert run(config, *fast_retries) == 0
    assert sent_ids(mixpanel) == list(range(300))
    assert commits(tmp_path) == ["0"]


def test_a_run_that_stops_before_sending_counts_no_earlier_runs_batch(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = delta_table_config(tmp_path, mixpanel, rows(spark, 0, 300))
    mixpanel.set_faults(Faults(rate_5xx=1.0))
    assert run(config, "mixpanel.max_attempts=1", "mixpanel.check_credentials=false") == 3
    assert summary(tmp_path)["rows_read"] == 300  # micro-batch 0 stopped, with its summary written
    (stopped,) = summary(tmp_path)["micro_batches"]  # listed, as it is counted in the total
    assert [stopped[key] for key in ("batch_id", "stopped", "rows_read", "unsent")] == [0, "exhausted", 300, 300]

    mixpanel.set_faults(Faults())
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_SECRET", "not-the-secret")
    assert run(config) == 2  # micro-batch 0 again, stopped by the credential check before it had a summary
    assert summary(tmp_path)["rows_read"] == 0


def test_a_driver_killed_mid_batch_loses_and_duplicates_nothing(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    config = delta_table_config(tmp_path, mixpanel, rows(spark, 0, 2000))
    mixpanel.set_faults(Faults(latency_s=0.5))
    log = tmp_path / "job.log"
    job = job_process(config, log, "mixpanel.max_in_flight=2", "mixpanel.max_batch_events=50")
    try:  # 40 requests, 2 at a time, half a second each
        wait_until(lambda: mixpanel.raw_arrivals >= 200 or job.poll() is not None, 300, "the first requests")
        assert job.poll() is None, log.read_text()
        os.killpg(job.pid, signal.SIGKILL)  # the driver and its JVM, mid-batch
    finally:
        job.wait(timeout=60)
    assert 200 <= mixpanel.raw_arrivals < 2000
    assert commits(tmp_path) == []

    mixpanel.set_faults(Faults())
    assert run(config) == 0
    assert sent_ids(mixpanel) == list(range(2000))  # every row, each once after dedup
    assert commits(tmp_path) == ["0"]


def test_a_continuous_run_picks_up_new_files_and_stops_on_sigterm(
    spark: SparkSession, mixpanel: FakeMixpanel, tmp_path: Path,
) -> None:
    source = tmp_path / "landing"
    add_files(spark, rows(spark, 0, 100), "parquet", source, tmp_path / "first")
    config = write_config(tmp_path, mixpanel, {"format": "parquet", "path": str(source)},
                          trigger="continuous", trigger_interval_s=1)
    log = tmp_path / "job.log"
    job = job_process(config, log)

    def new_file_sent() -> None:
        wait_until(lambda: len(mixpanel.unique_events) >= 100 or job.poll() is not None, 300, "the first file")
        add_files(spark, rows(spark, 100, 50), "parquet", source, tmp_path / "second")
        wait_until(lambda: len(mixpanel.unique_events) >= 150 or job.poll() is not None, 120, "the new file")
        assert job.poll() is None, log.read_text()

    assert stopped_by_sigterm(job, new_file_sent) == 0, log.read_text()
    assert sent_ids(mixpanel) == list(range(150))
    assert commits(tmp_path) == ["0", "1"]
    assert summary(tmp_path)["imported"] == 150
