"""Embedded local Spark as a plain `python` run starts it (its own JVM, in a process of its own)."""

import os
import subprocess
import sys
from pathlib import Path

from mp_spark import class_archive
from tests.test_backfill_e2e import REPO

SHOW_JVM_OPTIONS = """
from pyspark.sql import SparkSession
from mp_spark.session import local_builder
spark = local_builder(SparkSession.builder, with_delta=False).getOrCreate()
runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
print("\\n".join(str(option) for option in runtime.getInputArguments()))
"""


def test_a_users_driver_java_options_apply_beside_the_class_archive(tmp_path: Path) -> None:
    (tmp_path / "spark-defaults.conf").write_text("spark.driver.extraJavaOptions -Dmp.user.option=kept\n")
    env = {**os.environ, "SPARK_CONF_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", SHOW_JVM_OPTIONS], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    options = result.stdout.splitlines()
    assert "-Dmp.user.option=kept" in options
    assert set(class_archive.java_options().split()) <= set(options)  # make setup wrote the archive: it is used
