"""Executor side: send one partition's lines and add its tally to the run's accumulator.

Spark runs `send_partition` through `mapInArrow`, a foreachPartition that receives Arrow batches:
each task gets its lines as Arrow string arrays and never builds a Python object per row. Its
tally goes to an accumulator, which Spark applies once per partition (a retried or speculative
attempt never counts twice) and which the driver reads while the job runs. Only module-level
functions and frozen settings cross to the executors (jobs/ runs as __main__ and cannot be pickled
by reference).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import Accumulator, AccumulatorParam, TaskContext
from pyspark.sql import types as T

from mp_spark.batching import Chunk, batches_from_chunks
from mp_spark.sender import BatchSender, Rejection, SenderSettings, SendTally
from mp_spark.transport import DryRunTransport, RequestsTransport

COUNTERS = (
    "rows", "imported", "rejected", "invalid", "trimmed", "batches", "requests", "retries", "raw_bytes", "gzip_bytes"
)
# A `PartitionResult` as a row of partitions/ (its rejections go to rejected/).
PARTITION_SCHEMA = T.StructType([
    T.StructField("index", T.LongType()),
    *[T.StructField(name, T.LongType()) for name in COUNTERS],
    T.StructField("seconds", T.DoubleType()),
])


@dataclass(frozen=True)
class PartitionResult:
    index: int
    rows: int  # events sent: imported + rejected
    imported: int
    rejected: int
    invalid: int  # rows of this partition set aside by validation (not sent)
    trimmed: int  # events sent with a value cut to fit Mixpanel's limits
    batches: int
    requests: int
    retries: int
    raw_bytes: int
    gzip_bytes: int
    seconds: float
    rejections: list[Rejection] = field(default_factory=list, compare=False)

    @classmethod
    def from_tally(cls, index: int, tally: SendTally, *, invalid: int, trimmed: int, seconds: float
                   ) -> PartitionResult:
        counts = {name: getattr(tally, name) for name in COUNTERS if name not in ("invalid", "trimmed")}
        return cls(index=index, **counts, invalid=invalid, trimmed=trimmed, seconds=round(seconds, 3),
                   rejections=tally.rejections)

    @classmethod
    def from_dict(cls, values: dict) -> PartitionResult:
        return cls(**{**values, "rejections": [Rejection(**r) for r in values["rejections"]]})


class TallyList(AccumulatorParam):
    """Accumulates the tasks' tallies (as dicts) into one list; each merge makes a new list, so the
    driver can read it from another thread while Spark adds to it."""

    def zero(self, value: list) -> list:
        return []

    def addInPlace(self, value1: list, value2: list) -> list:
        return value1 + value2


# mapInArrow needs an output schema; the tasks return nothing (their tallies go to the accumulator).
NO_OUTPUT = T.StructType([T.StructField("unused", T.LongType())])


def partition_sender(
    settings: SenderSettings, tallies: Accumulator, *, first_index: int, dry_run: bool
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function every executor runs on its partitions: one requests.Session per task.

    Its input has two columns: the event's JSON line with its newline, or null for a row validation
    set aside (counted here, written to rejected/ by the driver); and 1 where a sent event had a
    value cut to fit Mixpanel's limits, else 0.
    """

    def send_partition(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        started = time.monotonic()
        invalid = trimmed = 0

        def chunks() -> Iterator[Chunk]:
            nonlocal invalid, trimmed
            for record_batch in record_batches:
                lines = record_batch.column(0)
                invalid += lines.null_count
                trimmed += pc.sum(record_batch.column(1)).as_py() or 0
                yield arrow_chunk(lines.drop_null() if lines.null_count else lines)

        transport = DryRunTransport() if dry_run else RequestsTransport(pool_size=settings.in_flight)
        try:
            batches = batches_from_chunks(
                chunks(), max_events=settings.max_batch_events, max_bytes=settings.max_batch_bytes
            )
            tally = BatchSender(settings, transport).send_batches(batches)
        finally:
            transport.close()
        result = PartitionResult.from_tally(first_index + TaskContext.get().partitionId(), tally, invalid=invalid,
                                            trimmed=trimmed, seconds=time.monotonic() - started)
        tallies.add([asdict(result)])
        yield from ()

    return send_partition


def arrow_chunk(lines: pa.Array) -> Chunk:
    """The data buffer and offsets of an Arrow string array without nulls, copying neither."""
    if len(lines) == 0:
        return b"", [0]
    _validity, offsets, data = lines.buffers()[:3]
    code = "q" if pa.types.is_large_string(lines.type) else "i"  # 64- or 32-bit offsets
    positions = memoryview(offsets).cast(code)[lines.offset : lines.offset + len(lines) + 1]
    return memoryview(data), positions
