"""run_partitions on local Spark (2 cores): which partitions run, how many at once, and failures."""

import time
from collections.abc import Iterator
from itertools import pairwise

import pyarrow as pa
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession

from mp_spark.dispatch import run_partitions
from mp_spark.partition import NO_OUTPUT, TallyList

FRAME_ROWS = 600


def six_partitions(spark: SparkSession) -> DataFrame:
    return spark.range(FRAME_ROWS, numPartitions=3).repartition(6, "id")


def runs_of(spark: SparkSession, partitions: list[int], at_once: int, fail_on: int | None = None
            ) -> tuple[list[tuple], Exception | None]:
    """(partition, start, end, rows) of each task that ran, in the order they started; and the failure."""
    spans = spark.sparkContext.accumulator([], TallyList())

    def record(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        partition, start = TaskContext.get().partitionId(), time.monotonic()
        rows = sum(batch.num_rows for batch in batches)
        if partition == fail_on:
            raise ValueError(f"partition {partition} failed")
        time.sleep(0.3)  # long enough for tasks running at once to overlap
        spans.add([(partition, start, time.monotonic(), rows)])
        yield from ()

    failure = None
    try:
        run_partitions(spark.sparkContext, six_partitions(spark).mapInArrow(record, NO_OUTPUT), partitions,
                       at_once=at_once, describe=lambda partition: f"test partition {partition}")
    except Exception as exc:
        failure = exc
    return sorted(spans.value, key=lambda span: span[1]), failure


def overlapped(runs: list[tuple]) -> bool:
    return any(later[1] < earlier[2] for earlier, later in pairwise(runs))


def test_with_no_more_cores_than_the_budget_one_action_runs_every_partition(spark: SparkSession) -> None:
    runs, failure = runs_of(spark, [0, 2, 3, 5], at_once=2)
    assert failure is None
    assert sorted(run[0] for run in runs) == list(range(6))  # the caller leaves the others empty
    assert sum(run[3] for run in runs) == FRAME_ROWS
    assert overlapped(runs)  # both cores used


def test_a_budget_below_the_cores_runs_just_the_listed_partitions_one_at_a_time(spark: SparkSession) -> None:
    runs, failure = runs_of(spark, [0, 2, 3, 5], at_once=1)
    assert failure is None
    assert [run[0] for run in runs] == [0, 2, 3, 5]
    rows = six_partitions(spark).rdd.glom().map(len).collect()
    assert [run[3] for run in runs] == [rows[p] for p in (0, 2, 3, 5)]
    assert not overlapped(runs)


def test_the_first_failure_is_raised_and_no_further_partition_starts(spark: SparkSession) -> None:
    runs, failure = runs_of(spark, [0, 2, 3, 5], at_once=1, fail_on=2)
    assert failure is not None and "partition 2 failed" in str(failure)
    assert [run[0] for run in runs] == [0]
    assert spark.sparkContext.statusTracker().getActiveJobsIds() == []
