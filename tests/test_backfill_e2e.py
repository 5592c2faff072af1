"""The whole job, in process: real local Spark, the real CLI, a Mixpanel-compatible server on loopback."""

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mp_spark.cli import lost_spark, main, not_py4j_on_root, what_next
from tests.conftest import free_port, start_connect_server
from tests.fake_mixpanel import FakeMixpanel, Faults

ROWS = 5000
CHECK = 1  # the event the driver sends alone first, to check the credentials (sent again with its partition)
REPO = Path(__file__).resolve().parents[1]
FAST_RETRIES = [
    "mixpanel.backoff_initial_s=0.01", "mixpanel.backoff_max_s=0.05",
    "mixpanel.jitter_min_s=0", "mixpanel.jitter_max_s=0.01", "mixpanel.max_attempts=10",
]


@pytest.fixture(scope="module")
def events(spark: SparkSession) -> DataFrame:
    """5,000 flat source rows: a user id, an event name, a timestamp and two properties."""
    event_names = F.array(*[F.lit(name) for name in ("Page View", "Sign Up", "Purchase", "Search")])
    return spark.range(ROWS).select(
        F.format_string("user-%03d", F.col("id") % 97).alias("user_id"),
        F.element_at(event_names, (F.col("id") % 4 + 1).cast("int")).alias("event_name"),
        F.timestamp_seconds(F.lit(1_717_200_000) + F.col("id") * 37).alias("ts"),
        F.when(F.col("id") % 3 == 0, "pro").otherwise("free").alias("plan"),
        (F.col("id") / 10).alias("amount"),
    )


@pytest.fixture(scope="module")
def sources(events: DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sources")
    events.write.parquet(str(root / "parquet"))
    events.write.format("delta").save(str(root / "delta"))
    events.write.option("compression", "gzip").json(str(root / "json"))  # ts becomes an ISO string
    return {fmt: str(root / fmt) for fmt in ("parquet", "delta", "json")}


def write_config(tmp_path: Path, source_format: str, path: str, server: FakeMixpanel) -> str:
    config = {
        "source": {"format": source_format, "path": path},
        "mapping": {"event": "event_name", "time": "ts", "distinct_id": "user_id",
                    "include_columns": ["plan", "amount"]},
        "mixpanel": {"project_id": server.project_id, "api_host": server.url, "max_batch_events": 300},
        "job": {"records_per_partition": 1000, "results_path": str(tmp_path / "results")},
    }
    target = tmp_path / "backfill.json"
    target.write_text(json.dumps(config))
    return str(target)


def run_job(config_path: str, *extra: str) -> int:
    args = ["--config", config_path]
    for override in [*FAST_RETRIES, *extra]:
        args += ["--set", override]
    return main(args)


def summary_of(tmp_path: Path) -> dict:
    return read_summary(tmp_path / "results")


def read_summary(results: Path) -> dict:
    (part,) = (results / "summary").glob("part-*")  # a one-part text dataset, as Spark writes it
    return json.loads(part.read_text())


def sent_partitions(spark: SparkSession, results: Path) -> dict[int, int]:
    """Partition index -> rows, for the partitions the run's outcomes record as sent."""
    outcomes = spark.read.parquet(str(results / "outcomes")).filter("record = 'outcome' AND status = 'ok'")
    return {row["index"]: row["rows"] for row in outcomes.collect()}


def expected_keys(events: DataFrame) -> set[tuple]:
    rows = events.select("event_name", "user_id", F.unix_millis("ts").alias("ms")).collect()
    return {(r.event_name, r.user_id, r.ms) for r in rows}


def received_keys(server: FakeMixpanel) -> set[tuple]:
    return {key[:3] for key in server.unique_events}


@pytest.mark.connect
@pytest.mark.parametrize("source_format", ["parquet", "delta", "json"])
def test_backfill_imports_every_row_exactly_once(
    spark: SparkSession, events: DataFrame, sources: dict[str, str], mixpanel: FakeMixpanel,
    service_account: None, tmp_path: Path, source_format: str,
) -> None:
    exit_code = run_job(write_config(tmp_path, source_format, sources[source_format], mixpanel))

    assert exit_code == 0
    assert received_keys(mixpanel) == expected_keys(events)  # `time` is the source timestamp in ms
    assert len(mixpanel.unique_events) == mixpanel.raw_arrivals - CHECK == ROWS
    assert mixpanel.max_events_per_request <= 300 and mixpanel.all_gzip
    summary = summary_of(tmp_path)
    assert (summary["rows_read"], summary["imported"], summary["rejected"], summary["invalid"]) == (ROWS, ROWS, 0, 0)
    assert summary["partitions"] == 5 and summary["batches"] >= ROWS // 300
    partitions = spark.read.json(str(tmp_path / "results" / "partitions"))
    assert partitions.agg(F.sum("rows"), F.sum("imported")).first() == (ROWS, ROWS)
    some_event = next(iter(mixpanel.unique_events.values()))
    assert set(some_event["properties"]) == {"time", "distinct_id", "$insert_id", "ip", "plan", "amount"}
    assert some_event["properties"]["ip"] == "0"  # no geolocation from the cluster's address


def test_backfill_loses_nothing_under_injected_faults(
    spark: SparkSession, events: DataFrame, sources: dict[str, str], mixpanel: FakeMixpanel,
    service_account: None, tmp_path: Path,
) -> None:
    mixpanel.set_faults(Faults(rate_429=0.10, rate_5xx=0.05, rate_drop=0.02, rate_5xx_after_import=0.02, seed=5))

    assert run_job(write_config(tmp_path, "parquet", sources["parquet"], mixpanel)) == 0

    injected = mixpanel.injected
    assert injected["429"] and injected["5xx"] and injected["drop"]
    assert received_keys(mixpanel) == expected_keys(events)
    assert mixpanel.raw_arrivals >= ROWS  # a batch answered 503 after import arrives twice; dedup keeps one
    summary = summary_of(tmp_path)
    assert summary["imported"] == ROWS and summary["retries"] >= sum(injected.values())
    assert summary["rows_read"] == summary["imported"] + summary["rejected"] + summary["invalid"]


@pytest.mark.connect
def test_backfill_sets_aside_invalid_rows_and_records_mixpanel_rejections(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    rows = [
        ("u1", "Page View", 1_717_200_000),
        ("u2", "Page View", 1_717_200_001),
        (None, "Page View", 1_717_200_002),  # invalid: no distinct_id
        ("u3", "Page View", 1_000),  # invalid: before 1971
        ("anonymous", "Sign Up", 1_717_200_003),  # invalid: placeholder id
        ("u4", "Refused", 1_717_200_004),  # valid, but Mixpanel refuses it (a rule the job does not know)
    ]
    source = tmp_path / "mixed"
    spark.createDataFrame(rows, "user_id string, event_name string, ts long").write.parquet(str(source))
    config = write_config(tmp_path, "parquet", str(source), mixpanel)
    mixpanel.set_faults(Faults(refuse_event="Refused"))

    assert run_job(config, "mapping.include_columns=[]") == 1

    summary = summary_of(tmp_path)
    assert (summary["rows_read"], summary["imported"], summary["rejected"], summary["invalid"]) == (6, 2, 1, 3)
    rejected = spark.read.json(str(tmp_path / "results" / "rejected")).collect()
    assert sorted((r.stage, r.field) for r in rejected) == [
        ("mixpanel", "event"), ("validation", "distinct_id"), ("validation", "distinct_id"),
        ("validation", "time"),
    ]
    assert all(r.message and r.event for r in rejected)


def test_backfill_rerun_leaves_the_unique_count_unchanged(
    sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)
    assert run_job(config) == 0
    first = dict(mixpanel.unique_events)

    assert run_job(config) == 0

    assert mixpanel.unique_events.keys() == first.keys()
    assert mixpanel.raw_arrivals == 2 * (ROWS + CHECK)


@pytest.mark.connect
def test_backfill_with_wrong_credentials_makes_one_request_and_exits_2(
    sources: dict[str, str], mixpanel: FakeMixpanel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_USER", "sa-user")
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_SECRET", "not-the-secret")

    assert run_job(write_config(tmp_path, "parquet", sources["parquet"], mixpanel)) == 2

    assert mixpanel.requests == mixpanel.statuses[401] == 1  # the driver's check, before any executor sends
    error = capsys.readouterr().err
    assert "401" in error and "mixpanel.project_id" in error and "not-the-secret" not in error
    assert not (tmp_path / "results" / "outcomes").exists()  # no sending job started
    # Nothing was sent, and the manifest may not be written yet (the count runs beside the check).
    assert "fix the cause, then run the job again" in error and "--resume" not in error


@pytest.mark.parametrize("budget", [pytest.param(4, marks=pytest.mark.connect), 1])
def test_a_task_answered_401_is_not_retried(
    sources: dict[str, str], mixpanel: FakeMixpanel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, budget: int,
) -> None:
    """Without the driver's check, each task stops at its first round of 401s, and Spark does not retry it."""
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_USER", "sa-user")
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_SECRET", "not-the-secret")
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)

    assert run_job(config, "mixpanel.check_credentials=false", f"mixpanel.max_in_flight={budget}",
                   "mixpanel.max_batch_events=100") == 2

    assert 1 <= mixpanel.statuses[401] == mixpanel.requests <= budget
    assert summary_of(tmp_path)["requests"] == mixpanel.requests  # made by partitions that were not sent


def test_backfill_config_errors_exit_2_before_any_request(
    sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)

    assert run_job(config, "mapping.distinct_id=no_such_column") == 2
    assert "mapping.distinct_id" in capsys.readouterr().err
    assert run_job(config, "source.path=/no/such/place") == 2
    assert "source.path" in capsys.readouterr().err
    assert mixpanel.requests == 0


def test_backfill_without_credentials_names_the_variables(
    sources: dict[str, str], mixpanel: FakeMixpanel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("MP_SERVICE_ACCOUNT_USER", "MP_SERVICE_ACCOUNT_SECRET", "MP_PROJECT_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    assert run_job(write_config(tmp_path, "parquet", sources["parquet"], mixpanel)) == 2
    assert "MP_SERVICE_ACCOUNT_SECRET" in capsys.readouterr().err
    assert mixpanel.requests == 0


def test_backfill_with_project_token_auth(
    events: DataFrame, sources: dict[str, str], mixpanel: FakeMixpanel, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    for name in ("MP_SERVICE_ACCOUNT_USER", "MP_SERVICE_ACCOUNT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MP_PROJECT_TOKEN", mixpanel.project_token)

    assert run_job(write_config(tmp_path, "parquet", sources["parquet"], mixpanel)) == 0
    assert received_keys(mixpanel) == expected_keys(events)


@pytest.mark.connect
def test_a_source_with_no_rows_is_a_complete_run_of_nothing(
    spark: SparkSession, sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_job(write_config(tmp_path, "parquet", sources["parquet"], mixpanel), "source.where=1 = 0") == 0
    summary = summary_of(tmp_path)
    assert (summary["rows_read"], summary["partitions"], summary["complete"], summary["requests"]) == (0, 1, True, 0)
    partitions = spark.read.json(str(tmp_path / "results" / "partitions")).collect()
    assert [(row["index"], row["status"], row["rows"]) for row in partitions] == [(0, "ok", 0)]
    assert main(["--resume", str(tmp_path / "results")]) == 2  # the empty partition is recorded as sent
    assert "there is nothing to resume" in capsys.readouterr().err


def test_a_run_stopped_before_its_results_were_written_is_finished_by_writing_them(
    spark: SparkSession, sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    mixpanel.set_faults(Faults(refuse_event="Sign Up"))
    assert run_job(write_config(tmp_path, "parquet", sources["parquet"], mixpanel)) == 1
    results, first = tmp_path / "results", summary_of(tmp_path)
    refused = spark.read.json(str(results / "rejected")).count()
    for written in ("summary", "partitions", "rejected"):  # as if the driver had died while writing them
        shutil.rmtree(results / written)
    arrivals = mixpanel.raw_arrivals

    assert main(["--resume", str(results)]) == 1

    counts = ("rows_read", "imported", "rejected", "invalid", "complete")
    assert {key: summary_of(tmp_path)[key] for key in counts} == {key: first[key] for key in counts}
    assert spark.read.json(str(results / "rejected")).count() == refused == first["rejected"] > 0
    assert mixpanel.raw_arrivals - arrivals <= CHECK  # nothing sent again but the credential check's event


def test_a_resume_stopped_while_writing_its_results_is_finished_by_the_next(
    sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    mixpanel.set_faults(Faults(rate_5xx=1.0))
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)
    assert run_job(config, "mixpanel.max_attempts=1", "mixpanel.check_credentials=false") == 3
    summary, stopped_summary = tmp_path / "results" / "summary", tmp_path / "stopped-summary"
    shutil.copytree(summary, stopped_summary)  # the first attempt's, which says the run is not complete
    mixpanel.set_faults(Faults())
    assert resume(tmp_path) == 0
    shutil.rmtree(summary)
    shutil.copytree(stopped_summary, summary)  # as if the resume had died before it wrote its own

    assert resume(tmp_path) == 0  # not "nothing to resume": the run's results are written this time
    assert (summary_of(tmp_path)["complete"], summary_of(tmp_path)["imported"]) == (True, ROWS)


def test_a_dry_run_of_no_rows_in_two_phases_is_a_complete_run_of_nothing(
    sources: dict[str, str], mixpanel: FakeMixpanel, tmp_path: Path,
) -> None:
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)
    overrides = ["--set", "source.where=1 = 0", "--set", "job.order=recent_first"]
    assert main(["--config", config, "--dry-run", *overrides]) == 0
    summary = summary_of(tmp_path)
    assert (summary["rows_read"], summary["partitions"], summary["complete"]) == (0, 1, True)


def test_backfill_dry_run_sends_nothing_and_reports_what_it_would(
    events: DataFrame, sources: dict[str, str], mixpanel: FakeMixpanel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("MP_SERVICE_ACCOUNT_USER", "MP_SERVICE_ACCOUNT_SECRET", "MP_PROJECT_TOKEN"):
        monkeypatch.delenv(name, raising=False)  # a dry run needs no credentials

    assert main(["--config", write_config(tmp_path, "json", sources["json"], mixpanel), "--dry-run"]) == 0

    assert mixpanel.requests == 0
    summary = summary_of(tmp_path)
    assert summary["dry_run"] is True and summary["imported"] == ROWS and summary["gzip_bytes"] > 0
    out = capsys.readouterr().out
    assert "dry run" in out and "5 events as they would be sent" in out
    assert f"properties over {ROWS:,} rows" in out and re.search(r"^  plan +string", out, re.M)  # profiled by the tasks
    shown = [json.loads(line) for line in out.splitlines() if line.startswith('  {"event"')]
    keys = {(e["event"], e["properties"]["distinct_id"], e["properties"]["time"]) for e in shown}
    assert len(keys) == 5 and keys <= expected_keys(events)  # source rows, as the sending tasks saw them


@pytest.mark.connect
def test_quickstart_script_runs_the_bundled_sample(spark: SparkSession, tmp_path: Path) -> None:
    """`python jobs/backfill.py` starts its own local Spark, as a user's first run does (or, in the Spark
    Connect run, finds the server in SPARK_REMOTE)."""
    result = subprocess.run(
        [sys.executable, "jobs/backfill.py", "--config", "conf/sample.yaml", "--dry-run",
         "--set", f"job.results_path={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path)
    assert summary["rows_read"] == summary["imported"] == 3000
    assert "would import" in result.stdout


@pytest.mark.connect
def test_the_job_runs_from_spark_connects_client_alone(
    spark: SparkSession, mixpanel: FakeMixpanel, service_account: None, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    """A user who installed mp_spark beside pyspark-client (no JVM, no py4j) and points SPARK_REMOTE at a server."""
    if not request.config.getoption("--spark-connect"):
        pytest.skip("needs the Spark Connect run's server")
    connect_client_only = request.getfixturevalue("connect_client_only")  # installed only for this run
    result = subprocess.run(
        [sys.executable, "jobs/backfill.py", "--config", "conf/sample.yaml", "--set", f"job.results_path={tmp_path}",
         "--set", f"mixpanel.api_host={mixpanel.url}", "--set", f"mixpanel.project_id={mixpanel.project_id}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(connect_client_only)}, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path)
    assert summary["rows_read"] == summary["imported"] == len(mixpanel.unique_events) == 3000


@pytest.mark.parametrize(("budget", "least_seen"), [
    # 5 partitions, 2 running at once (local[2]): 2 requests in flight per task
    pytest.param(4, 3, marks=pytest.mark.connect),
    (1, 1),  # fewer than the cores: only 1 task sends at a time
])
def test_backfill_keeps_requests_in_flight_within_the_job_budget(
    sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path, budget: int,
    least_seen: int,
) -> None:
    mixpanel.set_faults(Faults(latency_s=0.1))
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)

    assert run_job(config, f"mixpanel.max_in_flight={budget}", "mixpanel.max_batch_events=100") == 0

    assert len(mixpanel.unique_events) == ROWS and mixpanel.raw_arrivals == ROWS + CHECK
    assert least_seen <= mixpanel.max_concurrent <= budget  # pipelined within tasks, never above the budget
    assert summary_of(tmp_path)["partitions"] == 5



def test_backfill_pacing_cuts_429s_from_a_rate_limited_server(
    sources: dict[str, str], service_account: None, tmp_path: Path,
) -> None:
    # A limit of 1000 events/s: even a slow machine offers more (4 requests of 250 in flight), so
    # without pacing the server keeps answering 429.
    throttled = {}
    for pacing in (False, True):
        with FakeMixpanel(admit_events_per_second=1000) as server:
            run_dir = tmp_path / f"pacing-{pacing}"
            run_dir.mkdir()
            config = write_config(run_dir, "parquet", sources["parquet"], server)
            assert run_job(config, f"mixpanel.pacing={str(pacing).lower()}", "mixpanel.max_batch_events=250",
                           "mixpanel.rate_limit_events_per_second=1000", "mixpanel.max_in_flight=4",
                           "mixpanel.max_attempts=100") == 0
            assert len(server.unique_events) == ROWS
            throttled[pacing] = server.statuses[429]

    assert throttled[False] >= 10
    assert throttled[True] <= throttled[False] / 3


@pytest.mark.connect
def test_backfill_exits_3_when_mixpanel_keeps_failing(
    sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mixpanel.set_faults(Faults(rate_5xx=1.0))

    exit_code = run_job(write_config(tmp_path, "parquet", sources["parquet"], mixpanel), "mixpanel.max_attempts=2")

    assert exit_code == 3
    assert mixpanel.raw_arrivals == 0
    # The driver's check gave up, so nothing was sent: there is no run to finish, only one to start again.
    error = capsys.readouterr().err
    assert "when Mixpanel or the network is back, run the job again" in error and "--resume" not in error


def test_a_sending_tasks_warnings_carry_the_time_level_and_logger_as_the_drivers_do(
    sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    """A retry is logged by the task's Python worker, whose stderr a user reads among the driver's lines
    (local Spark) or in the executor's log (a cluster)."""
    mixpanel.set_faults(Faults(rate_5xx=1.0))
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)
    overrides = [*FAST_RETRIES, "mixpanel.max_attempts=2", "mixpanel.check_credentials=false"]
    result = subprocess.run(
        [sys.executable, "jobs/backfill.py", "--config", config,
         *[arg for override in overrides for arg in ("--set", override)]],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 3, result.stderr[-3000:]
    retried = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING mp_spark\.sender: "
                         r"/import attempt 1 failed \(HTTP 50[023]\); retrying in \d+\.\d s$", re.M)
    assert retried.search(result.stderr), result.stderr[-3000:]


def test_backfill_sends_only_the_time_window(
    spark: SparkSession, events: DataFrame, sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None,
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)

    assert run_job(config, "job.time_from=2024-06-01T12:00:00Z", "job.time_to=2024-06-02") == 0

    start_ms, end_ms = 1_717_243_200_000, 1_717_286_400_000
    want = {key for key in expected_keys(events) if start_ms <= key[2] < end_ms}
    assert 0 < len(want) < ROWS
    assert received_keys(mixpanel) == want
    assert summary_of(tmp_path)["rows_read"] == len(want)


def test_backfill_recent_first_sends_the_recent_window_before_older_history(
    spark: SparkSession, events: DataFrame, sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None,
    tmp_path: Path,
) -> None:
    # The data spans two days: a whole number of days back from now puts the cutoff within its last day.
    last_ms = max(key[2] for key in expected_keys(events))
    recent_days = math.ceil((time.time() * 1000 - last_ms) / 86_400_000)
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)

    assert run_job(config, "job.order=recent_first", f"job.recent_days={recent_days}") == 0

    arrivals = [key[2] for key in mixpanel.unique_events]  # dicts keep first-arrival order
    assert len(arrivals) == ROWS
    # Some split: every event sent before it is newer than every event sent after it.
    assert any(min(arrivals[:k]) > max(arrivals[k:]) for k in range(1, len(arrivals)))
    indexes = [row["index"] for row in spark.read.json(str(tmp_path / "results" / "partitions")).collect()]
    assert sorted(indexes) == list(range(len(indexes)))  # the two phases' partitions numbered apart


@pytest.mark.connect
def test_phases_of_days_are_sent_newest_first_each_in_a_job_of_its_own(
    spark: SparkSession, events: DataFrame, sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None,
    tmp_path: Path,
) -> None:
    # The events span 2024-06-01T00:00Z to 2024-06-03T03:23Z: days back from 06-04 make three phases.
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)
    time_to_ms = 1_717_459_200_000  # 2024-06-04T00:00Z

    assert run_job(config, "job.phase_days=1", "job.time_to=2024-06-04") == 0

    manifest = json.loads(next((tmp_path / "results" / "run").glob("part-*")).read_text())
    assert manifest["phase_rows"] == [329, 2335, 2336] and manifest["phase_partitions"] == [1, 3, 3]
    (attempt,) = (tmp_path / "results" / "outcomes").glob("run=*/attempt=*")
    assert sorted(path.name for path in attempt.glob("phase=*")) == ["phase=0", "phase=1", "phase=2"]
    # Past the credential check's event (any of them), each day arrives before the day before it.
    days_back = [(time_to_ms - 1 - key[2]) // 86_400_000 for key in mixpanel.unique_events][CHECK:]
    assert days_back == sorted(days_back) and set(days_back) == {0, 1, 2}
    assert len(mixpanel.unique_events) == ROWS


@pytest.mark.parametrize("budget", [pytest.param(2, marks=pytest.mark.connect), 1])  # two partitions at once; one
def test_an_interrupted_run_resumes_without_resending_sent_partitions(
    spark: SparkSession, events: DataFrame, sources: dict[str, str], mixpanel: FakeMixpanel,
    service_account: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], budget: int,
) -> None:
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)
    one_request_per_partition = ["mixpanel.max_batch_events=2000", f"mixpanel.max_in_flight={budget}"]  # ~1000 rows
    # The driver's check and 3 of the 5 partitions get through, then 401s stop the run.
    mixpanel.set_faults(Faults(revoke_after_requests=4))

    assert run_job(config, *one_request_per_partition) == 2
    assert "--resume" in capsys.readouterr().err
    sent_first = sent_partitions(spark, tmp_path / "results")
    assert len(sent_first) == 3 and sum(sent_first.values()) + CHECK >= len(mixpanel.unique_events)
    time.sleep(2)  # a task the run interrupted may still be meeting 401s: let it end first
    arrived_first = mixpanel.raw_arrivals
    mixpanel.set_faults(Faults())  # the credentials work again

    assert resume(tmp_path) == 0

    assert received_keys(mixpanel) == expected_keys(events)
    # The partitions sent are not sent again; the rest, and the driver's one-event check, are.
    assert mixpanel.raw_arrivals - arrived_first == ROWS - sum(sent_first.values()) + CHECK
    summary = summary_of(tmp_path)
    assert (summary["rows_read"], summary["imported"], summary["partitions"], summary["resumed_partitions"]) == (
        ROWS, ROWS, 5, 3)
    assert summary["complete"] and summary["unsent"] == 0
    partitions = spark.read.json(str(tmp_path / "results" / "partitions"))
    assert partitions.count() == 5 and partitions.agg(F.sum("imported")).first()[0] == ROWS


def test_a_dry_run_cannot_be_resumed_and_leaves_no_finished_partitions_to_a_later_run(
    spark: SparkSession, sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)
    results = str(tmp_path / "results")
    assert main(["--config", config, "--dry-run"]) == 0
    assert len(sent_partitions(spark, tmp_path / "results")) == 5  # the dry run's partitions, none sent
    assert main(["--resume", results]) == 2 and "was a dry run" in capsys.readouterr().err
    assert main(["--resume", results, "--dry-run"]) == 2
    assert main(["--resume", results, "--set", "job.records_per_partition=500"]) == 2  # other partitions

    monkeypatch.setenv("MP_SERVICE_ACCOUNT_SECRET", "not-the-secret")  # a real run into the same path stops at once
    assert run_job(config) == 2
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_SECRET", "sa-secret")
    assert main(["--resume", results, *[arg for s in FAST_RETRIES for arg in ("--set", s)]]) == 0
    assert len(mixpanel.unique_events) == ROWS  # nothing skipped as 'finished' by the dry run


@pytest.mark.connect
def test_progress_is_logged_while_the_run_goes(
    sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each task waits at least 0.5 s on its answers and 5 partitions take 3 waves on 2 cores: the
    # send phase lasts over 1.5 s however fast or loaded the machine, several 0.1 s ticks.
    mixpanel.set_faults(Faults(latency_s=0.5))
    with caplog.at_level("INFO", logger="mp_spark.progress"):
        assert run_job(write_config(tmp_path, "parquet", sources["parquet"], mixpanel),
                       "job.progress_interval_s=0.1") == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    midway = [line for line in lines if any(f"({n} of 5 partitions sent" in line for n in range(1, 5))]
    assert midway and all(re.search(r"about (\d+ min )?\d+ s left", line) for line in midway)
    assert not any("sending starts next" in line for line in lines[lines.index(midway[0]):])  # only before it
    assert lines[-1].startswith(f"progress: 100% (5 of 5 partitions sent, about {ROWS:,} of {ROWS:,} rows)")
    assert lines[-1].endswith("; nothing left")


@pytest.mark.connect
def test_config_is_read_through_spark_when_it_is_a_url(
    sources: dict[str, str], mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
) -> None:
    config = write_config(tmp_path, "parquet", sources["parquet"], mixpanel)
    assert run_job(Path(config).as_uri()) == 0  # file:///...: Hadoop's FileSystem, as for s3:// or dbfs:/
    assert summary_of(tmp_path)["imported"] == ROWS
    assert run_job("file:///nowhere/backfill.yaml") == 2


def test_backfill_reads_a_catalog_table(
    spark: SparkSession, events: DataFrame, sources: dict[str, str], mixpanel: FakeMixpanel,
    service_account: None, tmp_path: Path,
) -> None:
    """source.table, as on Databricks with Unity Catalog (here the session's own catalog)."""
    spark.sql(f"CREATE TABLE IF NOT EXISTS backfill_events USING delta LOCATION '{sources['delta']}'")
    config = write_config(tmp_path, "delta", sources["delta"], mixpanel)

    assert run_job(config, "source.path=null", "source.table=backfill_events") == 0
    assert received_keys(mixpanel) == expected_keys(events)
    assert run_job(config, "source.path=null", "source.table=no_such_table") == 2



@pytest.mark.connect
def test_an_unexpected_failure_exits_4_with_a_short_paragraph_and_the_traceback_in_the_results(
    mixpanel: FakeMixpanel, service_account: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A source Spark cannot read (here a file that is not Parquet at all) is neither a config error nor a
    Mixpanel one: exit 4, never 0 or 1."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "part-00000.parquet").write_bytes(b"this is not parquet" * 10)
    config = write_config(tmp_path, "parquet", str(broken), mixpanel)

    assert run_job(config) == 4

    error = capsys.readouterr().err
    assert "mp-spark: unexpected failure:" in error and f"--resume {tmp_path / 'results'}" in error
    (part,) = (tmp_path / "results" / "error").glob("part-*")
    assert "Traceback" in part.read_text() and "sa-secret" not in part.read_text()
    assert mixpanel.requests == 0


def job_process(config: str, log: Path, *overrides: str, remote: str | None = None) -> subprocess.Popen:
    """The job as a scheduler runs it: its own process (and local Spark, or the Connect server at
    `remote`), in a session of its own."""
    env = {**os.environ, "MP_SERVICE_ACCOUNT_USER": "sa-user", "MP_SERVICE_ACCOUNT_SECRET": "sa-secret"}
    env.pop("SPARK_REMOTE", None)
    args = [sys.executable, "jobs/backfill.py", "--config", config, *(["--remote", remote] if remote else [])]
    for override in overrides:
        args += ["--set", override]
    with log.open("w") as output:
        return subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True, stdout=output,
                                stderr=subprocess.STDOUT)


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def jvm_of(job: subprocess.Popen) -> int:
    """The process id of the job's driver JVM: its child process that runs java."""
    found = subprocess.run(["pgrep", "-P", str(job.pid), "java"], capture_output=True, text=True)
    assert found.returncode == 0, "the job has no java child process"
    return int(found.stdout.split()[0])


def resume(tmp_path: Path) -> int:
    return main(["--resume", str(tmp_path / "results"), *[arg for s in FAST_RETRIES for arg in ("--set", s)]])


# The job as its own process, stopped from outside mid-send, as a user or the operating system does:
# what the user reads, the exit code, and that --resume then finishes the run.

def sending_job(tmp_path: Path, sources: dict[str, str], mixpanel: FakeMixpanel, *overrides: str,
                remote: str | None = None) -> tuple[subprocess.Popen, Path]:
    """The job in its own process, once its executors send (the credential check is the first request),
    and the file its output goes to."""
    log = tmp_path / "job.log"
    job = job_process(write_config(tmp_path, "parquet", sources["parquet"], mixpanel), log,
                      "mixpanel.max_batch_events=100", *overrides, remote=remote)
    wait_until(lambda: mixpanel.requests >= 3 or job.poll() is not None, 300, "the executors' first requests")
    assert job.poll() is None, log.read_text()
    return job, log


@pytest.fixture
def slow_mixpanel(mixpanel: FakeMixpanel) -> FakeMixpanel:
    mixpanel.set_faults(Faults(latency_s=0.3))  # 50 batches in 5 partitions: several seconds of sending
    return mixpanel


def committed_outcomes(tmp_path: Path) -> list[Path]:
    """The sending tasks' outcome files that Spark has committed (a running task's lie under _temporary)."""
    return [path for path in (tmp_path / "results" / "outcomes").rglob("part-*")
            if "_temporary" not in path.parts]


def once_a_partition_is_sent(tmp_path: Path, sources: dict[str, str], mixpanel: FakeMixpanel
                             ) -> tuple[subprocess.Popen, Path]:
    """The job in its own process, once the first partition's outcome is committed. Its 5 partitions go
    in tasks of their own, two at a time, one request at a time each (a task of several partitions,
    as on a cluster, commits them when it ends)."""
    job, log = sending_job(tmp_path, sources, mixpanel, "mixpanel.max_in_flight=2")
    wait_until(lambda: committed_outcomes(tmp_path) or job.poll() is not None, 120, "a partition's outcome")
    assert job.poll() is None, log.read_text()
    return job, log


def processes_of(job: subprocess.Popen) -> list[str]:
    """The processes left of the job's session: its JVM, and the Python workers (in groups of their own)."""
    found = subprocess.run(["ps", "-o", "pid=", "-s", str(job.pid)], capture_output=True, text=True)
    return found.stdout.split()


def resume_sends_only_what_was_not_sent(spark: SparkSession, tmp_path: Path, job: subprocess.Popen,
                                        mixpanel: FakeMixpanel) -> None:
    sent_first = sent_partitions(spark, tmp_path / "results")
    assert sent_first  # the outcomes of the tasks that ended before the job was stopped
    # A task that was cut off sends no more once its worker is gone, and what it sent has been answered.
    wait_until(lambda: not processes_of(job) and mixpanel.in_flight == 0, 60, "the stopped job's last requests")
    arrived_first = mixpanel.raw_arrivals
    mixpanel.set_faults(Faults())
    assert resume(tmp_path) == 0
    assert len(received_keys(mixpanel)) == ROWS and summary_of(tmp_path)["imported"] == ROWS
    assert summary_of(tmp_path)["resumed_partitions"] == len(sent_first)
    assert mixpanel.raw_arrivals - arrived_first == ROWS - sum(sent_first.values()) + CHECK


def test_ctrl_c_says_how_to_finish_the_run_without_tracebacks_and_resume_finishes_it(
    spark: SparkSession, sources: dict[str, str], slow_mixpanel: FakeMixpanel, service_account: None,
    tmp_path: Path,
) -> None:
    job, log = once_a_partition_is_sent(tmp_path, sources, slow_mixpanel)
    os.killpg(job.pid, signal.SIGINT)
    job.wait(timeout=120)
    err = log.read_text()

    assert job.returncode == 130, err[-3000:]
    assert f"mp-spark: interrupted; finish the run with --resume {tmp_path / 'results'}" in err
    assert "Traceback" not in err  # py4j's own record of the interrupted call stays out of the user's way
    resume_sends_only_what_was_not_sent(spark, tmp_path, job, slow_mixpanel)


def test_ctrl_c_while_the_credentials_are_checked_does_not_wait_for_the_checks_backoff(
    sources: dict[str, str], mixpanel: FakeMixpanel, tmp_path: Path,
) -> None:
    mixpanel.set_faults(Faults(rate_5xx=1.0))  # the check's request keeps failing, and it backs off for 60 s
    log = tmp_path / "job.log"
    job = job_process(write_config(tmp_path, "parquet", sources["parquet"], mixpanel), log,
                      "mixpanel.backoff_initial_s=60", "mixpanel.jitter_min_s=0", "mixpanel.jitter_max_s=0.01")
    wait_until(lambda: mixpanel.requests >= 1 or job.poll() is not None, 300, "the credential check's request")
    os.killpg(job.pid, signal.SIGINT)
    job.wait(timeout=40)  # well before the check's next try

    assert job.returncode == 130, log.read_text()[-3000:]
    assert mixpanel.requests == 1


def test_a_killed_driver_jvm_is_named_as_the_cause_and_resume_finishes_the_run(
    spark: SparkSession, sources: dict[str, str], slow_mixpanel: FakeMixpanel, service_account: None,
    tmp_path: Path,
) -> None:
    job, log = once_a_partition_is_sent(tmp_path, sources, slow_mixpanel)
    os.kill(jvm_of(job), signal.SIGKILL)  # as the kernel's out-of-memory killer does
    job.wait(timeout=120)
    err = log.read_text()

    assert job.returncode == 4, err[-3000:]
    assert "the job lost Spark: the driver's JVM stopped" in err and "config error" not in err
    assert f"--resume {tmp_path / 'results'}" in err
    resume_sends_only_what_was_not_sent(spark, tmp_path, job, slow_mixpanel)


def test_a_connect_server_that_stops_mid_run_is_named_as_the_cause_in_seconds_and_resume_finishes_the_run(
    sources: dict[str, str], slow_mixpanel: FakeMixpanel, service_account: None, tmp_path: Path,
    python_without_mp_spark: Path,
) -> None:
    pytest.importorskip("grpc")
    (tmp_path / "server").mkdir()
    server, url = start_connect_server(tmp_path / "server", python_without_mp_spark)
    try:
        job, log = sending_job(tmp_path, sources, slow_mixpanel, remote=url)
    finally:
        server.kill()  # as a cluster that is restarted, or a server that runs out of memory
        server.wait(timeout=60)
    try:
        job.wait(timeout=120)  # Spark's client alone would retry for ten minutes
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        raise
    err = log.read_text()

    assert job.returncode == 4, err[-3000:]
    assert "the job lost its Spark Connect server: the connection was refused" in err
    assert f"--resume {tmp_path / 'results'}" in err and "config error" not in err
    slow_mixpanel.set_faults(Faults())
    assert resume(tmp_path) == 0  # here on local Spark: the run's files are all it needs
    assert len(received_keys(slow_mixpanel)) == ROWS and summary_of(tmp_path)["imported"] == ROWS


@pytest.mark.parametrize(("url", "said"), [
    ("sc://ADDRESS/;token=dapi-not-a-real-token",
     "--remote: cannot reach the Spark Connect server at ADDRESS: the connection was refused"),
    ("sc://ADDRESS;token=dapi-not-a-real-token",  # no "/" before the parameters: Spark's error quotes the URL
     "--remote: not a Spark Connect URL (sc://HOST:PORT, then /;name=value parameters): ValueError for ADDRESS"),
])
def test_a_connect_url_that_leads_nowhere_is_a_config_error_naming_its_address_not_its_token(
        url: str, said: str) -> None:
    pytest.importorskip("grpc")
    address = f"127.0.0.1:{free_port()}"
    result = subprocess.run(
        [sys.executable, "jobs/backfill.py", "--config", "conf/sample.yaml", "--dry-run",
         "--remote", url.replace("ADDRESS", address)],
        cwd=REPO, capture_output=True, text=True, timeout=120,  # Spark's client alone retries for ten minutes
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"mp-spark: config error: {said.replace('ADDRESS', address)}" in result.stderr
    assert "dapi-not-a-real-token" not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_a_run_that_cannot_be_resumed_is_run_again() -> None:
    assert what_next("/runs/r1", incremental=False, resumable=False) == "run the job again"
    assert what_next("/runs/r1", incremental=False, resumable=True).startswith("finish the run with --resume /runs/r1")


def test_only_what_py4j_logs_on_the_root_logger_is_left_out() -> None:
    def record(name: str, path: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, path, 1, "Exception while sending command.", None, None)

    py4j = os.path.join("site-packages", "py4j", "java_gateway.py")
    assert not not_py4j_on_root(record("root", py4j))
    assert not_py4j_on_root(record("root", os.path.join("mp_spark", "run.py")))
    assert not_py4j_on_root(record("py4j.clientserver", py4j))  # its named loggers keep their own level


def test_a_lost_jvm_or_an_unreachable_connect_server_is_lost_spark_and_other_failures_are_not() -> None:
    grpc = pytest.importorskip("grpc")
    from pyspark.errors.exceptions.connect import SparkConnectGrpcException

    assert lost_spark(ConnectionRefusedError(111, "Connection refused"))  # py4j, to a JVM that is gone
    unavailable, internal = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL
    assert lost_spark(SparkConnectGrpcException(message="failed to connect", grpc_status_code=unavailable))
    assert not lost_spark(SparkConnectGrpcException(message="bad plan", grpc_status_code=internal))
    assert not lost_spark(FileNotFoundError("conf/missing.yaml"))
