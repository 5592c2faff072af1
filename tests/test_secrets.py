"""Secrets leave no trace: not in stdout, stderr, Spark's event log (what the Spark UI shows) or the results."""

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mp_spark.cli import redacted
from tests.fake_mixpanel import FakeMixpanel, Faults

REPO = Path(__file__).resolve().parents[1]
SECRET = "Secret-7f3a9c41e2d8b6"  # recognizable, and never used for anything else


def spark_submit(tmp_path: Path, name: str, server: FakeMixpanel) -> tuple[int, str]:
    """Run the job as users do on a cluster, with Spark's event log on; return its exit code and all it wrote."""
    events = tmp_path / name / "events"
    events.mkdir(parents=True)
    env = {**os.environ, "MP_SERVICE_ACCOUNT_USER": "sa-user", "MP_SERVICE_ACCOUNT_SECRET": SECRET,
           "PYSPARK_PYTHON": sys.executable}
    args = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]",
            "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events.as_uri()}",
            "--conf", "spark.eventLog.compress=false",  # searchable as text
            "jobs/backfill.py", "--config", "conf/sample.yaml"]
    settings = [f"mixpanel.project_id={server.project_id}", f"mixpanel.api_host={server.url}",
                "mixpanel.max_attempts=2", "mixpanel.backoff_initial_s=0.01", "mixpanel.jitter_min_s=0",
                "mixpanel.jitter_max_s=0.01", f"job.results_path={tmp_path / name / 'results'}"]
    for setting in settings:
        args += ["--set", setting]
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout + result.stderr


def everything_written(root: Path) -> str:
    return "".join(path.read_bytes().decode("utf-8", "replace") for path in root.rglob("*") if path.is_file())


@pytest.mark.parametrize(
    ("case", "expected_exit"),
    [("401", 2), ("5xx", 3)],
)
def test_a_failing_run_leaves_no_trace_of_the_secret(tmp_path: Path, case: str, expected_exit: int) -> None:
    accepted = ("sa-user", "another-secret" if case == "401" else SECRET)
    with FakeMixpanel(service_account=accepted, faults=Faults(rate_5xx=1.0 if case == "5xx" else 0.0)) as server:
        exit_code, output = spark_submit(tmp_path, case, server)

    assert exit_code == expected_exit, output[-3000:]
    assert server.requests > 0  # the secret was used
    written = everything_written(tmp_path / case)
    assert "SparkListenerEnvironmentUpdate" in written  # the event log is there to be searched
    assert SECRET not in output and SECRET not in written
    encoded = base64.b64encode(f"sa-user:{SECRET}".encode()).decode()
    assert encoded not in output and encoded not in written  # nor the Authorization header it makes


def test_a_spark_connect_urls_token_is_redacted_wherever_a_failure_quotes_it() -> None:
    text = "cannot parse 'sc://h:443/;token=dapi0123456789;x-databricks-cluster-id=0123' nor \"sc://h;token=abc\""
    assert redacted(text, None) == ("cannot parse 'sc://h:443/;token=***;x-databricks-cluster-id=0123' nor "
                                    "\"sc://h;token=***\"")
