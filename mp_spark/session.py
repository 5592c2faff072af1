"""The one place a SparkSession is made: reuse the cluster's, or start local Spark for a plain `python` run."""

from __future__ import annotations

import os
import sys

from pyspark.sql import SparkSession

DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def get_spark(app_name: str = "mp-spark-backfill", *, with_delta: bool = False) -> SparkSession:
    """Return the active session (Databricks, spark-submit, pyspark shell) or start an embedded local one.

    Under spark-submit the JVM already exists and its master, packages and configs come from the
    command line; only a plain `python jobs/backfill.py` run starts local Spark here.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(app_name)
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # launched by spark-submit or the pyspark shell
        return builder.getOrCreate()
    return local_builder(builder, with_delta=with_delta).getOrCreate()


def local_builder(
    builder: SparkSession.Builder, *, with_delta: bool, master: str = "local[*, 4]"
) -> SparkSession.Builder:
    """Configure embedded local Spark: all cores, task retries as on a cluster, Delta jars from Maven.

    The default master gives each task 4 attempts, like a cluster's spark.task.maxFailures.
    """
    # Workers must run this same interpreter (not whatever `python3` is on PATH) to see the same
    # packages; PySpark takes the workers' interpreter from this variable when the context starts.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = builder.master(master)
    if with_delta:
        from delta import configure_spark_with_delta_pip  # a `local` extra, not needed on clusters

        for key, value in DELTA_SQL_CONF.items():
            builder = builder.config(key, value)
        builder = configure_spark_with_delta_pip(builder)
    return builder
