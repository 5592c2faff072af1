"""A class-data-sharing archive of the classes local Spark's JVM loads, so that it starts faster.

Loading and verifying those few thousand classes takes a local run's JVM several seconds at every
start; mapping them from an archive takes a fraction of that (docs/performance.md). `make setup`
writes the archive once, with one run of the sample (`python -m mp_spark.class_archive ARGS`, which
takes the job's own arguments); embedded local Spark then uses it. A JVM that cannot use it (another
Java, other jars) runs without it, silently. Spark's configuration directory, when there is one, goes
first on the classpath, which no archive can match: then local Spark goes without it
(`mp_spark.session.local_java_options`). Only local runs use it: spark-submit and clusters start
their JVMs themselves.
"""

from __future__ import annotations

import os
import sys

import pyspark

PATH = os.path.join(sys.prefix, "mp-spark-classes.jsa")  # beside the environment whose pyspark wrote it
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"
WRITING = "MP_SPARK_WRITING_CLASS_ARCHIVE"


def java_options() -> str:
    """The driver JVM's options that write or use the archive; none when there is none to use."""
    if os.environ.get(WRITING):
        return f"-XX:ArchiveClassesAtExit={PATH} {QUIET}"
    if os.path.exists(PATH):
        return f"-XX:SharedArchiveFile={PATH} -Xshare:auto {QUIET}"
    return ""


def spark_conf_dir() -> str:
    """Where Spark's launcher looks for spark-defaults.conf, and which it puts on the driver's classpath."""
    spark_home = os.environ.get("SPARK_HOME") or os.path.dirname(pyspark.__file__)
    return os.environ.get("SPARK_CONF_DIR") or os.path.join(spark_home, "conf")


def write(argv: list[str]) -> int:
    """Run the job once with `argv` in a JVM that writes the archive when it exits, and wait for it."""
    from pyspark import SparkContext

    from mp_spark.cli import main

    os.environ[WRITING] = "1"
    code = main(argv)
    gateway = SparkContext._gateway
    SparkContext.getOrCreate().stop()
    if gateway is not None and gateway.proc is not None:  # the JVM exits when its stdin closes
        gateway.proc.stdin.close()
        gateway.proc.wait(timeout=300)
    return code


if __name__ == "__main__":
    raise SystemExit(write(sys.argv[1:]))
