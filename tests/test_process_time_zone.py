"""The job in a process whose TZ is not UTC: the JVM's default zone (hence the session's) and the
Python workers' zone follow TZ, and no value sent may depend on it."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from tests.fake_mixpanel import FakeMixpanel
from tests.test_backfill_e2e import REPO
from tests.test_mapping import mixpanel_date, utc_ms

AN_HOUR_AGO = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
WALL_CLOCKS = {  # event name -> its time, a UTC wall clock
    "before the window": "2011-12-29 23:59:59.999",  # job.time_from is 2011-12-30: not part of the run
    "Apia's missing day": "2011-12-30 12:00:00",
    "Lord Howe's gap": "2013-10-06 02:15:00",
    "Lord Howe's overlap": "2014-04-06 01:45:00.5",
    "recent": AN_HOUR_AGO,  # job.order recent_first: sent before the others
}


def run_job(config: Path, zone: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TZ": zone, "MP_SERVICE_ACCOUNT_USER": "sa-user", "MP_SERVICE_ACCOUNT_SECRET": "sa-secret"}
    result = subprocess.run([sys.executable, "jobs/backfill.py", "--config", str(config), *args],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_run_sends_the_same_utc_values_under_any_process_time_zone(
    spark: SparkSession, mixpanel: FakeMixpanel, tmp_path: Path
) -> None:
    source = tmp_path / "events"
    rows = spark.createDataFrame(list(WALL_CLOCKS.items()), "name string, wall string")
    rows.select("name", F.col("wall").cast("timestamp_ntz").alias("at"),
                F.concat("wall", F.lit("Z")).cast("timestamp").alias("instant")).write.parquet(str(source))
    config = {
        "source": {"format": "parquet", "path": str(source)},
        "mapping": {"event": "name", "time": "at", "distinct_id": "'u1'",
                    "properties": {"at": "at", "instant": "instant", "list": "array(instant)",
                                   "object": "struct(at, instant)", "day": "to_date(at)"}},
        "mixpanel": {"project_id": mixpanel.project_id, "api_host": mixpanel.url},
        "job": {"time_from": "2011-12-30", "order": "recent_first", "recent_days": 7,
                "results_path": str(tmp_path / "results")},
    }
    (tmp_path / "backfill.json").write_text(json.dumps(config))

    run_job(tmp_path / "backfill.json", "Pacific/Apia")
    dry_run = run_job(tmp_path / "backfill.json", "Australia/Lord_Howe", "--dry-run")

    received = list(mixpanel.unique_events.values())  # in order of arrival
    assert received[0]["event"] == "recent"
    expected = {}
    for name, wall in WALL_CLOCKS.items():
        if name != "before the window":
            text = mixpanel_date(wall)
            expected[name] = {"time": utc_ms(wall), "distinct_id": "u1", "ip": "0", "at": text, "instant": text,
                              "list": [text], "object": {"at": text, "instant": text}, "day": wall[:10]}
    assert {e["event"]: {k: v for k, v in e["properties"].items() if k != "$insert_id"} for e in received} == expected
    samples = [json.loads(line) for line in dry_run.stdout.splitlines() if line.startswith("  {")]
    by_name = sorted(received, key=lambda event: event["event"])
    assert sorted(samples, key=lambda event: event["event"]) == by_name  # the same lines, $insert_id included
