"""The function every sending task runs (through `mapInArrow`): one partition's lines in, its outcome out.

A task gets its lines as Arrow string arrays and never builds a Python object per line. It
returns rows, not exceptions: one row per batch of records Mixpanel refused (`record` =
"rejection"), then one outcome row for the partition (`record` = "outcome": its tally and status).
Spark's writer commits the rows of exactly one successful attempt, so a retried task never counts
twice; a 401 is an outcome too, so Spark does not retry it. Only module-level functions and frozen
settings cross to the executors (jobs/ runs as __main__ and cannot be pickled by reference).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import types as T

from mp_spark.batching import Chunk, batches_from_chunks
from mp_spark.config import ConfigError
from mp_spark.endpoints import Endpoint
from mp_spark.sender import BatchSender, SenderSettings, SendStopped
from mp_spark.tally import FATAL, OK, OUTCOME_SCHEMA, REJECTION_FIELDS, PartitionOutcome, Rejection, Tally
from mp_spark.transport import DryRunTransport, RequestsTransport

OUTCOME, REJECTION = "outcome", "rejection"
# What the sending stage returns: outcome rows and rejection rows in one schema (`message` is both the
# outcome's and the rejection's).
SENT_SCHEMA = T.StructType([
    T.StructField("record", T.StringType()),
    *OUTCOME_SCHEMA.fields,
    *[T.StructField(name, T.StringType()) for name in REJECTION_FIELDS if name != "message"],
])
_ARROW_TYPES = {T.LongType(): pa.int64(), T.StringType(): pa.string(), T.DoubleType(): pa.float64()}
SENT_ARROW_SCHEMA = pa.schema([(f.name, _ARROW_TYPES[f.dataType]) for f in SENT_SCHEMA.fields])


def partition_sender(
    endpoint: Endpoint, settings: SenderSettings, index: int, *, dry_run: bool
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function a task runs on partition `index`: one requests.Session per task.

    Its input has two columns: the record's JSON line with its newline, or null for a row
    validation set aside (counted here; the driver writes those to rejected/); and 1 where a sent
    record had a value cut to fit Mixpanel's limits, else 0.
    """

    def send_partition(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        started = time.monotonic()
        set_aside = {"invalid": 0, "trimmed": 0}

        def chunks() -> Iterator[Chunk]:
            for record_batch in record_batches:
                lines = record_batch.column(0)
                set_aside["invalid"] += lines.null_count
                set_aside["trimmed"] += pc.sum(record_batch.column(1)).as_py() or 0
                yield arrow_chunk(lines.drop_null() if lines.null_count else lines)

        status, message, sent = OK, None, Tally()
        try:
            # An executor's own environment (spark.executorEnv.*) may name a CA bundle it does not have.
            transport = DryRunTransport() if dry_run else RequestsTransport(pool_size=settings.in_flight)
        except ConfigError as exc:
            status, message = FATAL, f"on an executor: {exc}"
        else:
            sender = BatchSender(endpoint, settings, transport)
            try:
                batches = batches_from_chunks(chunks(), max_events=settings.max_batch_events,
                                              max_bytes=settings.max_batch_bytes)
                for rejections in sender.send(batches):
                    yield rejection_rows(index, rejections)
            except SendStopped as stopped:
                status, message = stopped.status, stopped.message
            finally:
                transport.close()
                sent = sender.tally
        if status != OK:
            for _ in record_batches:  # the rest of the input is not sent, but Spark expects it read
                pass
        tally = sent + Tally(**set_aside)
        outcome = PartitionOutcome(index, tally, status, message, round(time.monotonic() - started, 3))
        yield pa.RecordBatch.from_pylist([{"record": OUTCOME, **outcome.as_row()}], schema=SENT_ARROW_SCHEMA)

    return send_partition


def rejection_rows(index: int, rejections: list[Rejection]) -> pa.RecordBatch:
    rows = [{"record": REJECTION, "index": index, "field": r.field, "message": r.message, "insert_id": r.insert_id,
             "event": r.event} for r in rejections]
    return pa.RecordBatch.from_pylist(rows, schema=SENT_ARROW_SCHEMA)


def arrow_chunk(lines: pa.Array) -> Chunk:
    """The data buffer and offsets of an Arrow string array without nulls, copying neither."""
    if len(lines) == 0:
        return b"", [0]
    _validity, offsets, data = lines.buffers()[:3]
    code = "q" if pa.types.is_large_string(lines.type) else "i"  # 64- or 32-bit offsets
    positions = memoryview(offsets).cast(code)[lines.offset : lines.offset + len(lines) + 1]
    return memoryview(data), positions
