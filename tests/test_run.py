"""The driver's run path (mp_spark/run.py) in parts, on the test session's Spark."""

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession

from mp_spark.run import RunStopped, while_checking
from mp_spark.tally import FATAL


@pytest.mark.connect
def test_a_failed_check_stops_the_works_spark_job_from_its_own_thread(spark: SparkSession, tmp_path: Path) -> None:
    """Wrong credentials must not wait for the work (a count that scans a whole JSON source, say): the
    check runs on a thread of its own, and classic Spark's session tags are per thread."""
    running = str(tmp_path / "running")

    def two_minutes(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        """Nested, so pickled whole: a Connect server's workers cannot import the tests."""
        for record_batch in record_batches:
            Path(running).touch()
            time.sleep(120)
            yield record_batch

    def check(stop: threading.Event) -> None:
        deadline = time.monotonic() + 60  # a job that fails before its task runs must not hang the suite
        while not Path(running).exists() and time.monotonic() < deadline:  # the work's job is running
            time.sleep(0.1)
        raise RunStopped(FATAL, "Mixpanel answered 401")

    def work(check_ended: Callable[[], None]) -> None:
        spark.range(0, 1, 1, 1).mapInArrow(two_minutes, "id long").collect()
        check_ended()

    started = time.monotonic()
    with pytest.raises(RunStopped, match="401"):
        while_checking(spark, check, work)
    assert time.monotonic() - started < 60
