"""Executor side: send one partition's lines and hand its tally back to the driver.

Only module-level functions and frozen settings cross to the executors (jobs/ runs as __main__
and cannot be pickled by reference).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pyspark import Accumulator, AccumulatorParam, TaskContext
from pyspark.sql import Row

from mp_spark.sender import BatchSender, Rejection, SenderSettings
from mp_spark.transport import DryRunTransport, RequestsTransport


@dataclass(frozen=True)
class PartitionResult:
    index: int
    rows: int
    imported: int
    rejected: int
    batches: int
    requests: int
    retries: int
    raw_bytes: int
    gzip_bytes: int
    seconds: float
    rejections: list[Rejection] = field(default_factory=list, compare=False)


class ListAccumulatorParam(AccumulatorParam):
    """Concatenates lists. Spark applies a task's update once, when the task succeeds, so retries don't double-count."""

    def zero(self, value: list) -> list:
        return []

    def addInPlace(self, value1: list, value2: list) -> list:  # noqa: N802 - Spark's name
        value1.extend(value2)
        return value1


def new_results_accumulator(spark_context) -> Accumulator:
    return spark_context.accumulator([], ListAccumulatorParam())


def partition_sender(
    settings: SenderSettings, *, dry_run: bool, results: Accumulator
) -> Callable[[Iterator[Row]], None]:
    """The function `foreachPartition` runs on every executor: one requests.Session per task."""

    def send_partition(rows: Iterator[Row]) -> None:
        started = time.monotonic()
        transport = DryRunTransport() if dry_run else RequestsTransport()
        try:
            tally = BatchSender(settings, transport).send_lines(row.line for row in rows)
        finally:
            transport.close()
        results.add([
            PartitionResult(
                index=TaskContext.get().partitionId(),
                rows=tally.rows,
                imported=tally.imported,
                rejected=tally.rejected,
                batches=tally.batches,
                requests=tally.requests,
                retries=tally.retries,
                raw_bytes=tally.raw_bytes,
                gzip_bytes=tally.gzip_bytes,
                seconds=round(time.monotonic() - started, 3),
                rejections=tally.rejections,
            )
        ])

    return send_partition
