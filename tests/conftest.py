"""Fixtures: one real Spark session per test run (classic local Spark, or with --spark-connect a Spark
Connect client of a local server this run starts), and a Mixpanel-compatible server on loopback.

`make test` runs the suite twice: on classic local Spark, then the end-to-end tests marked `connect`
as a Spark Connect client (a process can hold only one kind of session, hence two runs). Those cover
each source format, faults, a wrong secret, resume, profiles, lookup tables and incremental runs:
every path on which the two kinds of session could differ, without running everything twice.
"""

import os
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pyspark
import pytest
from pyspark.sql import SparkSession

from mp_spark.session import DELTA_SQL_CONF, local_builder
from tests.fake_mixpanel import FakeMixpanel

SESSION_TIME_ZONE = "America/Los_Angeles"  # deliberately not UTC: every time must come out the same anyway
SPARK_BIN = Path(sys.executable).parent  # the venv's spark-submit and spark-class
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"  # the delta-spark pip package's jar for pyspark 4.2
TEST_SESSION_CONF = {
    "spark.sql.shuffle.partitions": "2",  # the tests' data is tiny: a task per core, not 200
    "spark.databricks.delta.snapshotPartitions": "2",  # ... and not 50 for every read of a Delta log
    "spark.ui.enabled": "false",
    "spark.sql.session.timeZone": SESSION_TIME_ZONE,
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--spark-connect", action="store_true",
                     help="run as a Spark Connect client of a local server started for the run")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "connect: end to end, also run as a Spark Connect client (--spark-connect)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --spark-connect, only the tests marked `connect` run."""
    if config.getoption("--spark-connect"):
        kept = [item for item in items if "connect" in item.keywords]
        config.hook.pytest_deselected(items=[item for item in items if "connect" not in item.keywords])
        items[:] = kept


@pytest.fixture(scope="session")
def python_without_mp_spark(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python with this environment's packages but not mp_spark, as a cluster's executors have.

    A virtual environment whose one .pth file names this one's site-packages: the directory is on
    its path, but the .pth files in it (mp_spark's editable install among them) are not read.
    """
    root = tmp_path_factory.mktemp("python-without-mp-spark")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    (site,) = root.glob("lib/python*/site-packages")
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = root / "bin" / "python"
    check = subprocess.run([str(python), "-c", "import pyspark, pyarrow, requests; import mp_spark"],
                           cwd=root, capture_output=True, text=True)
    assert "No module named 'mp_spark'" in check.stderr, check.stderr
    return python


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise RuntimeError(f"nothing listens on port {port} after {timeout_s} s:\n{log.read_text()[-3000:]}")


def start_connect_server(workdir: Path, python: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """A local Spark Connect server (its Python workers run `python` in `workdir`) and its URL, once it listens.

    spark-submit's script execs the server's JVM: the process is the server itself.
    """
    port, log = free_port(), workdir / "server.log"
    env = {**os.environ, "PYSPARK_PYTHON": str(python), "SPARK_LOCAL_IP": "127.0.0.1"}
    command = [
        str(SPARK_BIN / "spark-submit"), "--class", "org.apache.spark.sql.connect.service.SparkConnectServer",
        "--master", "local[2, 4]",
        "--conf", "spark.connect.grpc.binding.address=127.0.0.1", "--conf", f"spark.connect.grpc.binding.port={port}",
        *[arg for key, value in TEST_SESSION_CONF.items() for arg in ("--conf", f"{key}={value}")],
        *options, "spark-internal",
    ]
    with log.open("w") as output:
        server = subprocess.Popen(command, cwd=workdir, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, server, log, timeout_s=300)
    except BaseException:
        server.kill()
        raise
    return server, f"sc://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def connect_server(python_without_mp_spark: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local Spark Connect server with Delta, whose Python workers cannot import mp_spark; its URL."""
    workdir = tmp_path_factory.mktemp("connect-server")  # the workers' working directory: no mp_spark here
    server, url = start_connect_server(
        workdir, python_without_mp_spark, "--packages", DELTA_PACKAGE,
        "--conf", "spark.connect.progress.reportInterval=100ms",  # as often as the progress test's lines
        *[arg for key, value in DELTA_SQL_CONF.items() for arg in ("--conf", f"{key}={value}")],
    )
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture(scope="session")
def connect_client_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory that, first on PYTHONPATH, leaves Spark Connect's client alone, as `pip install
    pyspark-client` does: that package (from PyPI, of this pyspark's version) in place of pyspark, and no py4j."""
    root = tmp_path_factory.mktemp("connect-client-only")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(root),
                    f"pyspark-client=={pyspark.__version__}"], check=True, timeout=300)
    (root / "py4j").mkdir()
    (root / "py4j" / "__init__.py").write_text('raise ImportError("no py4j beside pyspark-client")\n')
    return root


@pytest.fixture(scope="session")
def spark(request: pytest.FixtureRequest) -> Iterator[SparkSession]:
    """One real Spark session (with Delta) for the whole test run: classic local Spark, or a Connect client."""
    if request.config.getoption("--spark-connect"):
        url = request.getfixturevalue("connect_server")
        os.environ["SPARK_REMOTE"] = url  # what the job's own get_spark() and subprocesses will find
        session = SparkSession.builder.remote(url).getOrCreate()
        yield session
        session.stop()
        return
    builder = SparkSession.builder.appName("mp-spark-tests").config(map=TEST_SESSION_CONF)
    session = local_builder(builder, with_delta=True, master="local[2, 4]").getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


# Zones whose rules break code that formats or reads times through the session time zone: a DST gap
# and overlap of an hour (Los Angeles, Berlin), of 30 minutes (Lord Howe), and a whole missing day
# (Apia skipped 2011-12-30).
SESSION_ZONES = ["UTC", "America/Los_Angeles", "Europe/Berlin", "Australia/Lord_Howe", "Pacific/Apia"]


@pytest.fixture(params=SESSION_ZONES)
def session_zone(spark: SparkSession, request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test once in each of SESSION_ZONES as spark.sql.session.timeZone, then restore the session's."""
    before = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", request.param)
    yield request.param
    spark.conf.set("spark.sql.session.timeZone", before)


@pytest.fixture
def mixpanel() -> Iterator[FakeMixpanel]:
    """A Mixpanel-compatible /import server on 127.0.0.1, with strict validation and fault injection."""
    with FakeMixpanel() as server:
        yield server


@pytest.fixture
def service_account(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MP_PROJECT_TOKEN", raising=False)
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_USER", "sa-user")
    monkeypatch.setenv("MP_SERVICE_ACCOUNT_SECRET", "sa-secret")
