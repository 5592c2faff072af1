"""Embedded local Spark as a plain `python` run starts it (its own JVM, in a process of its own)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from mp_spark import class_archive, sources
from mp_spark.config import SourceConfig, parse_config
from mp_spark.session import (
    LOCAL_COLLECTOR,
    LOCAL_COMPILER_OPTIONS,
    SHORT_RUN_COMPILER_OPTIONS,
    SHORT_RUN_SOURCE_BYTES,
    is_short_run,
)
from mp_spark.sources import is_small_local_source
from tests.test_backfill_e2e import REPO

SHOW_JVM_OPTIONS = """
import sys
from pyspark.sql import SparkSession
from mp_spark.config import parse_config
from mp_spark.session import get_spark, local_builder
if sys.argv[1:]:  # a JSON source's path: local Spark as the job starts it for that source
    mapping = "mapping: {event: e, time: t, distinct_id: u}"
    spark = get_spark(config=parse_config(f"source: {{format: json, path: '{sys.argv[1]}'}}\\n{mapping}"))
else:
    spark = local_builder(SparkSession.builder, with_delta=False).getOrCreate()
runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
print("\\n".join(str(option) for option in runtime.getInputArguments()))
"""


def driver_java_options(*args: str, **env: str) -> list[str]:
    environ = {key: value for key, value in os.environ.items() if key != "SPARK_CONF_DIR"}
    result = subprocess.run([sys.executable, "-c", SHOW_JVM_OPTIONS, *args], cwd=REPO, env={**environ, **env},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()


@pytest.fixture
def no_conf_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Spark configuration directory, so that local Spark passes its own Java options."""
    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    if os.path.isdir(class_archive.spark_conf_dir()):
        pytest.skip("SPARK_HOME has a conf/ here, which owns the driver's Java options")


def test_without_a_spark_conf_dir_the_driver_gets_the_compiler_options_and_maps_the_class_archive(
        no_conf_dir: None) -> None:
    options = driver_java_options()
    assert set(LOCAL_COMPILER_OPTIONS.split()) | {LOCAL_COLLECTOR} <= set(options)
    if not os.path.exists(class_archive.PATH):
        pytest.skip("no class archive to use here: make setup writes it")
    assert f"-XX:SharedArchiveFile={class_archive.PATH}" in options


def test_a_spark_conf_dir_keeps_its_java_options_and_goes_without_ours(tmp_path: Path) -> None:
    # The directory goes first on the JVM's classpath, which the archive cannot match, and ours
    # would replace the administrator's default options.
    (tmp_path / "spark-defaults.conf").write_text("spark.driver.defaultJavaOptions -Dmp.admin.option=kept\n"
                                                  "spark.driver.extraJavaOptions -Dmp.user.option=kept\n")
    options = driver_java_options(SPARK_CONF_DIR=str(tmp_path))
    assert "-Dmp.admin.option=kept" in options and "-Dmp.user.option=kept" in options
    assert not any(option.startswith("-XX:SharedArchiveFile") for option in options)
    assert not (set(LOCAL_COMPILER_OPTIONS.split()) | {LOCAL_COLLECTOR}) & set(options)


def test_a_collector_chosen_in_the_users_java_options_is_kept_and_the_jvm_starts(no_conf_dir: None) -> None:
    # Two collectors stop the JVM before Spark starts ("Multiple garbage collectors selected").
    options = driver_java_options(JAVA_TOOL_OPTIONS="-XX:+UseSerialGC")
    assert LOCAL_COLLECTOR not in options
    assert "-XX:+UseSerialGC" in options


def test_a_short_run_compiles_with_c1_alone_and_keeps_the_collector_and_the_archive(
        no_conf_dir: None, tmp_path: Path) -> None:
    (tmp_path / "part-0.json").write_text('{"e": "Signed up", "t": 1700000000, "u": "u1"}\n')
    options = driver_java_options(str(tmp_path))
    assert SHORT_RUN_COMPILER_OPTIONS in options and LOCAL_COLLECTOR in options
    assert not set(LOCAL_COMPILER_OPTIONS.split()) & set(options)
    if os.path.exists(class_archive.PATH):
        assert f"-XX:SharedArchiveFile={class_archive.PATH}" in options


def source_of(path: str) -> SourceConfig:
    return SourceConfig(format="parquet", path=path)


def test_local_spark_leaves_progress_to_the_jobs_own_lines(spark: SparkSession) -> None:
    """A plain `python` run would otherwise get Spark's console bar, spliced into the job's log lines."""
    assert spark.sparkContext._jsc.sc().progressBar().isEmpty()


def test_a_local_source_is_small_up_to_the_limit_counting_every_file_below_its_path(tmp_path: Path) -> None:
    (tmp_path / "day=1").mkdir()
    (tmp_path / "day=1" / "part-0.parquet").write_bytes(b"x" * 600)
    (tmp_path / "part-1.parquet").write_bytes(b"x" * 400)
    assert is_small_local_source(source_of(str(tmp_path)), max_bytes=1000)
    assert is_small_local_source(source_of(tmp_path.as_uri()), max_bytes=1000)
    assert not is_small_local_source(source_of(str(tmp_path)), max_bytes=999)
    assert is_small_local_source(source_of(str(tmp_path / "part-1.parquet")), max_bytes=400)
    assert not is_small_local_source(source_of(str(tmp_path / "part-1.parquet")), max_bytes=399)


@pytest.mark.parametrize("path", [
    "s3://bucket/events", "abfss://c@account.dfs.core.windows.net/events", "file://otherhost/DIR", "/no/such/dir",
    "DIR/*.parquet",  # a glob over small files
    "DIR/[x]",  # a small directory whose name Spark would read as a glob
])
def test_a_source_whose_size_only_spark_can_tell_is_not_small(path: str, tmp_path: Path) -> None:
    (tmp_path / "part-0.parquet").write_bytes(b"x")
    (tmp_path / "[x]").mkdir()
    (tmp_path / "[x]" / "part-0.parquet").write_bytes(b"x")
    assert not is_small_local_source(source_of(path.replace("DIR", str(tmp_path))), max_bytes=1 << 40)


def test_a_table_is_not_a_small_local_source() -> None:
    assert not is_small_local_source(SourceConfig(format="delta", table="main.events"), max_bytes=1 << 40)


def test_a_directory_the_walk_could_miscount_is_not_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    large = tmp_path / "elsewhere"
    large.mkdir()
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "day=1").symlink_to(large, target_is_directory=True)  # Spark follows it
    assert not is_small_local_source(source_of(str(tmp_path / "events")), max_bytes=1 << 40)

    for i in range(4):
        (large / f"part-{i}.parquet").write_bytes(b"")
    assert is_small_local_source(source_of(str(large)), max_bytes=1 << 40)
    monkeypatch.setattr(sources, "MAX_FILES_WALKED", 3)  # too many files to count them all
    assert not is_small_local_source(source_of(str(large)), max_bytes=1 << 40)


def test_a_file_url_is_read_as_its_path_with_its_escapes(tmp_path: Path) -> None:
    spaced = tmp_path / "my events"
    spaced.mkdir()
    (spaced / "part-0.parquet").write_bytes(b"x" * 10)
    assert spaced.as_uri().endswith("my%20events")
    assert is_small_local_source(source_of(spaced.as_uri()), max_bytes=10)
    assert not is_small_local_source(source_of(spaced.as_uri()), max_bytes=9)


def test_only_a_backfill_of_a_small_local_source_is_a_short_run(tmp_path: Path) -> None:
    (tmp_path / "part-0.parquet").write_bytes(b"x" * 100)
    backfill = f"source: {{format: parquet, path: '{tmp_path}'}}\nmapping: {{event: e, time: t, distinct_id: u}}\n"
    assert is_short_run(parse_config(backfill))
    assert not is_short_run(parse_config(backfill + "job: {mode: incremental}"))  # a stream runs for days
    assert not is_short_run(None)  # the config is not read yet (remote, or a resume's)
    (tmp_path / "part-1.parquet").write_bytes(b"x" * SHORT_RUN_SOURCE_BYTES)
    assert not is_short_run(parse_config(backfill))


def sample_dry_run_with_no_session(**env: str) -> subprocess.CompletedProcess:
    """`python jobs/backfill.py` on the sample, as run with no Spark around it (no spark-submit, no
    SPARK_REMOTE), with `env` added to the environment."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("SPARK_REMOTE", "PYSPARK_GATEWAY_PORT")}
    return subprocess.run([sys.executable, "jobs/backfill.py", "--config", "conf/sample.yaml", "--dry-run"],
                          cwd=REPO, env={**inherited, **env}, capture_output=True, text=True, timeout=120)


def test_a_jvm_that_does_not_start_is_a_config_error_that_says_what_to_check(tmp_path: Path) -> None:
    result = sample_dry_run_with_no_session(JAVA_HOME=str(tmp_path / "no-java"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert ("mp-spark: config error: Spark did not start: [JAVA_GATEWAY_EXITED] Java gateway process exited before "
            "sending its port number; is Java 17 or later installed (JAVA_HOME, if set, must hold bin/java)?"
            in result.stderr)
    assert "Traceback" not in result.stderr


def test_with_spark_connects_client_alone_and_no_server_the_job_asks_for_one(connect_client_only: Path) -> None:
    result = sample_dry_run_with_no_session(PYTHONPATH=str(connect_client_only))
    assert result.returncode == 2, result.stderr[-3000:]
    assert ("mp-spark: config error: this Python has Spark Connect's client only (pyspark-client): give the job "
            "a server with --remote sc://HOST:PORT or SPARK_REMOTE" in result.stderr)
    assert "Traceback" not in result.stderr
