"""Embedded local Spark as a plain `python` run starts it (its own JVM, in a process of its own)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mp_spark import class_archive
from mp_spark.session import LOCAL_COLLECTOR, LOCAL_COMPILER_OPTIONS
from tests.test_backfill_e2e import REPO

SHOW_JVM_OPTIONS = """
from pyspark.sql import SparkSession
from mp_spark.session import local_builder
spark = local_builder(SparkSession.builder, with_delta=False).getOrCreate()
runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
print("\\n".join(str(option) for option in runtime.getInputArguments()))
"""


def driver_java_options(**env: str) -> list[str]:
    environ = {key: value for key, value in os.environ.items() if key != "SPARK_CONF_DIR"}
    result = subprocess.run([sys.executable, "-c", SHOW_JVM_OPTIONS], cwd=REPO, env={**environ, **env},
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
