"""The packaged job as a cluster runs it: `make dist`, then spark-submit with mp_spark only in the zip.

These tests run spark-submit with a Python that has the dependencies but not mp_spark (as a cluster
has): the bundled sample on a standalone cluster (a Master and a Worker) as a cluster user runs it,
and a Delta source without Delta's jars.
"""

import email
import fcntl
import json
import os
import re
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mp_spark import probe
from tests.conftest import SPARK_BIN, free_port, wait_for_port
from tests.fake_mixpanel import FakeMixpanel

REPO = Path(__file__).resolve().parents[1]
DIST = REPO / "dist"
# `make dist` empties the repository's dist/ and build/. With pytest -n 2 these tests may run in both
# processes (xdist's xdist_group mark, with this pytest, kept no group together): the lock of `wheel`
# keeps one process from building while the other uses them.
DIST_LOCK = Path(tempfile.gettempdir()) / "mp-spark-tests-dist.lock"


@pytest.fixture(scope="module")
def wheel() -> Iterator[Path]:
    """Build dist/ with the README's command; the wheel's path, until the module's tests are done."""
    with DIST_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        build = subprocess.run(["make", "dist"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert build.returncode == 0, build.stderr[-3000:]
        (path,) = DIST.glob("mp_spark-*-py3-none-any.whl")
        yield path


@pytest.fixture(scope="module")
def runtime_python(wheel: Path, python_without_mp_spark: Path) -> Path:
    """The Python of a cluster's driver and executors: the dependencies, and not mp_spark."""
    return python_without_mp_spark


def test_dist_zip_holds_exactly_the_wheels_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl, zipfile.ZipFile(DIST / "mp_spark.zip") as zipped:
        wheel_modules = {n for n in whl.namelist() if n.startswith("mp_spark/")}
        zip_files = {n for n in zipped.namelist() if not n.endswith("/")}
        (entry_points,) = [whl.read(n).decode() for n in whl.namelist() if n.endswith(".dist-info/entry_points.txt")]

    source_modules = {p.relative_to(REPO).as_posix() for p in (REPO / "mp_spark").glob("*.py")}
    assert zip_files == wheel_modules == source_modules
    assert "mp-spark-backfill = mp_spark.cli:run" in entry_points  # the Databricks python_wheel_task entry point
    # What the probe asks the executors for is what the wheel requires.
    with zipfile.ZipFile(wheel) as whl:
        (metadata,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        required = email.message_from_bytes(whl.read(metadata)).get_all("Requires-Dist")
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in required if ";" not in r}
    assert set(probe.NEEDED.values()) <= names


def clean_env(runtime_python: Path) -> dict[str, str]:
    """Nothing may point Spark or Python back at this repository or its .venv."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "SPARK_HOME", "SPARK_REMOTE") and not k.startswith("PYSPARK_")}
    env["PYSPARK_PYTHON"] = str(runtime_python)  # the driver's and the workers' interpreter
    return env


def test_a_delta_source_without_delta_s_jars_is_a_config_error_that_names_them(
    runtime_python: Path, tmp_path: Path,
) -> None:
    config = tmp_path / "delta.yaml"
    config.write_text(json.dumps({
        "source": {"format": "delta", "path": str(tmp_path / "table")},
        "mapping": {"event": "event", "time": "time", "distinct_id": "user"},
        "job": {"results_path": str(tmp_path / "results")},
    }))
    result = subprocess.run(
        [str(SPARK_BIN / "spark-submit"), "--master", "local[1]", "--py-files", str(DIST / "mp_spark.zip"),
         str(REPO / "jobs" / "backfill.py"), "--config", str(config), "--dry-run"],
        cwd=tmp_path, env=clean_env(runtime_python), capture_output=True, text=True, timeout=300,
    )
    said = result.stdout  # spark-submit passes on the Python driver's stderr in its stdout
    assert result.returncode == 2, said[-3000:]
    assert "--packages io.delta:delta-spark_4.2_2.13:4.4.0" in said
    assert "spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension" in said
    assert "delta-defaults" in said and "Traceback" not in said


@pytest.fixture(scope="module")
def standalone_cluster(runtime_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Spark standalone cluster on 127.0.0.1: a Master and one Worker of 2 cores; the master's URL."""
    workdir = tmp_path_factory.mktemp("standalone")
    spark_class = str(SPARK_BIN / "spark-class")
    env = {**clean_env(runtime_python), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_WORKER_DIR": str(workdir / "work")}
    port = free_port()
    processes = []
    try:
        for name, args in [
            ("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                        "--webui-port", str(free_port())]),
            ("worker", ["org.apache.spark.deploy.worker.Worker", "--cores", "2", "--memory", "2g",
                        "--webui-port", str(free_port()), f"spark://127.0.0.1:{port}"]),
        ]:
            log = workdir / f"{name}.log"
            with log.open("w") as output:
                processes.append(subprocess.Popen([spark_class, *args], cwd=workdir, env=env, stdout=output,
                                                  stderr=subprocess.STDOUT))
            if name == "master":
                wait_for_port(port, processes[0], log, timeout_s=120)
        yield f"spark://127.0.0.1:{port}"
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)


def test_spark_submit_to_a_standalone_cluster_imports_every_row(
    runtime_python: Path, standalone_cluster: str, tmp_path: Path,
) -> None:
    """As a cluster user runs it: client mode, mp_spark only in the zip, the executors' Python without it."""
    env = {**clean_env(runtime_python), "MP_SERVICE_ACCOUNT_USER": "sa-user", "MP_SERVICE_ACCOUNT_SECRET": "sa-secret"}
    # The premise: run from tmp_path, this interpreter cannot import mp_spark; only the zip has it.
    assert subprocess.run([str(runtime_python), "-c", "import mp_spark"], cwd=tmp_path, env=env,
                          capture_output=True).returncode != 0
    with FakeMixpanel() as server:
        result = subprocess.run(
            [str(SPARK_BIN / "spark-submit"), "--master", standalone_cluster,
             "--py-files", str(DIST / "mp_spark.zip"), "--conf", f"spark.pyspark.python={runtime_python}",
             "--conf", "spark.executor.memory=1g",
             str(REPO / "jobs" / "backfill.py"), "--config", str(REPO / "conf" / "sample.yaml"),
             "--set", f"source.path={REPO / 'data' / 'sample_events.json.gz'}",
             "--set", f"mixpanel.api_host={server.url}", "--set", f"mixpanel.project_id={server.project_id}",
             "--set", f"job.results_path={tmp_path / 'results'}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert len(server.unique_events) == 3000
    (part,) = (tmp_path / "results" / "summary").glob("part-*")
    summary = json.loads(part.read_text())
    assert summary["rows_read"] == summary["imported"] == 3000 and summary["complete"]
    assert "3 partitions" in result.stdout
