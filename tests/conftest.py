from collections.abc import Iterator

import pytest
from pyspark.sql import SparkSession

from mp_spark.session import local_builder


@pytest.fixture(scope="session")
def spark() -> Iterator[SparkSession]:
    """One real local Spark session (with Delta) for the whole test run.

    The session time zone is deliberately not UTC: `time` must come out the same anyway.
    """
    builder = (
        SparkSession.builder.appName("mp-spark-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "America/Los_Angeles")
    )
    session = local_builder(builder, with_delta=True, master="local[2, 4]").getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
