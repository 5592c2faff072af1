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


def two_minutes_after_touching(marker: Path) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A task's function that touches `marker`, then takes two minutes; nested, so that it is pickled
    whole (a Connect server's workers cannot import the tests)."""
    path = str(marker)

    def two_minutes(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for record_batch in record_batches:
            Path(path).touch()
            time.sleep(120)
            yield record_batch

    return two_minutes


@pytest.mark.connect
def test_a_failed_check_stops_the_works_spark_job_from_its_own_thread(spark: SparkSession, tmp_path: Path) -> None:
    """Wrong credentials must not wait for the work (a count that scans a whole JSON source, say): the
    check runs on a thread of its own, and classic Spark's session tags are per thread."""
    running = tmp_path / "running"

    def check(stop: threading.Event) -> None:
        deadline = time.monotonic() + 60  # a job that fails before its task runs must not hang the suite
        while not running.exists() and time.monotonic() < deadline:  # the work's job is running
            time.sleep(0.1)
        raise RunStopped(FATAL, "Mixpanel answered 401")

    def work(check_ended: Callable[[], None]) -> None:
        spark.range(0, 1, 1, 1).mapInArrow(two_minutes_after_touching(running), "id long").collect()
        check_ended()

    started = time.monotonic()
    with pytest.raises(RunStopped, match="401"):
        while_checking(spark, check, work)
    assert time.monotonic() - started < 60


@pytest.mark.connect
def test_a_failed_check_also_stops_the_job_the_work_starts_after_it(spark: SparkSession, tmp_path: Path) -> None:
    """Spark interrupts only the jobs running at the time: the check fails while the work is between jobs."""
    failed = tmp_path / "failed"

    def check(stop: threading.Event) -> None:
        failed.touch()
        raise RunStopped(FATAL, "Mixpanel answered 401")

    def work(check_ended: Callable[[], None]) -> None:
        deadline = time.monotonic() + 60
        while not failed.exists() and time.monotonic() < deadline:  # no job runs while the check fails
            time.sleep(0.1)
        time.sleep(0.5)
        spark.range(0, 1, 1, 1).mapInArrow(two_minutes_after_touching(tmp_path / "running"), "id long").collect()
        check_ended()

    started = time.monotonic()
    with pytest.raises(RunStopped, match="401"):
        while_checking(spark, check, work)
    assert time.monotonic() - started < 60
