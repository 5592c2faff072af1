"""Executor side: send one partition's lines and return its tally as the task's only output row.

Spark runs `send_partition` through `mapInArrow`, a foreachPartition that receives Arrow batches:
each task gets its lines as Arrow string arrays and never builds a Python object per row. Only
module-level functions and frozen settings cross to the executors (jobs/ runs as __main__ and
cannot be pickled by reference).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import pyarrow as pa
from pyspark import TaskContext
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from mp_spark.batching import Chunk, batches_from_chunks
from mp_spark.sender import BatchSender, Rejection, SenderSettings
from mp_spark.transport import DryRunTransport, RequestsTransport

REJECTION_TYPE = T.StructType(
    [T.StructField(name, T.StringType()) for name in ("field", "message", "insert_id", "event")]
)
COUNTERS = ("rows", "imported", "rejected", "invalid", "batches", "requests", "retries", "raw_bytes", "gzip_bytes")
# What each task returns: one row shaped like `PartitionResult`.
RESULT_SCHEMA = T.StructType([
    T.StructField("index", T.LongType()),
    *[T.StructField(name, T.LongType()) for name in COUNTERS],
    T.StructField("seconds", T.DoubleType()),
    T.StructField("rejections", T.ArrayType(REJECTION_TYPE)),
])


@dataclass(frozen=True)
class PartitionResult:
    index: int
    rows: int  # events sent: imported + rejected
    imported: int
    rejected: int
    invalid: int  # rows of this partition set aside by validation (not sent)
    batches: int
    requests: int
    retries: int
    raw_bytes: int
    gzip_bytes: int
    seconds: float
    rejections: list[Rejection] = field(default_factory=list, compare=False)


def partition_sender(
    settings: SenderSettings, *, dry_run: bool
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function every executor runs on its partitions: one requests.Session per task.

    Its input has one string column: the event's JSON line with its newline, or null for a row
    validation set aside (counted here, written to rejected/ by the driver).
    """

    def send_partition(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        started = time.monotonic()
        invalid = 0

        def chunks() -> Iterator[Chunk]:
            nonlocal invalid
            for record_batch in record_batches:
                lines = record_batch.column(0)
                invalid += lines.null_count
                yield arrow_chunk(lines.drop_null() if lines.null_count else lines)

        transport = DryRunTransport() if dry_run else RequestsTransport(pool_size=settings.in_flight)
        try:
            batches = batches_from_chunks(
                chunks(), max_events=settings.max_batch_events, max_bytes=settings.max_batch_bytes
            )
            tally = BatchSender(settings, transport).send_batches(batches)
        finally:
            transport.close()
        result = PartitionResult(
            index=TaskContext.get().partitionId(),
            rows=tally.rows,
            imported=tally.imported,
            rejected=tally.rejected,
            invalid=invalid,
            batches=tally.batches,
            requests=tally.requests,
            retries=tally.retries,
            raw_bytes=tally.raw_bytes,
            gzip_bytes=tally.gzip_bytes,
            seconds=round(time.monotonic() - started, 3),
            rejections=tally.rejections,
        )
        yield pa.RecordBatch.from_pylist([asdict(result)], schema=to_arrow_schema(RESULT_SCHEMA))

    return send_partition


def arrow_chunk(lines: pa.Array) -> Chunk:
    """The data buffer and offsets of an Arrow string array without nulls, copying neither."""
    if len(lines) == 0:
        return b"", [0]
    _validity, offsets, data = lines.buffers()[:3]
    code = "q" if pa.types.is_large_string(lines.type) else "i"  # 64- or 32-bit offsets
    positions = memoryview(offsets).cast(code)[lines.offset : lines.offset + len(lines) + 1]
    return memoryview(data), positions


def results_from_rows(rows: Iterable) -> list[PartitionResult]:
    """Rebuild the tasks' results from the collected output rows."""
    results = []
    for row in rows:
        values = row.asDict()
        values["rejections"] = [Rejection(**r.asDict()) for r in values["rejections"] or []]
        results.append(PartitionResult(**values))
    return sorted(results, key=lambda r: r.index)
