"""The function every sending task runs (through `mapInArrow`): its partitions' records in, their
outcomes out.

A task gets the records of one or more partitions, one partition after another (a coalesced task
holds several), each row tagged with its partition's index. It gets them as Arrow arrays and never
builds a Python object per sent line. It returns rows, not exceptions:

- `record` = "rejection": a record Mixpanel refused;
- `record` = "invalid": a record validation set aside (never sent);
- `record` = "sample": in a dry run, one of the partition's first lines, for the preview (`event`);
- `record` = "profile": in a dry run, the fingerprints of sampled records for the preview's profile,
  lines of them in one text;
- `record` = "outcome": one per partition, its tally and status, after its other rows.

Spark's writer commits the rows of exactly one successful attempt of each task, so a retried task
never counts twice; a 401 is an outcome too, so Spark does not retry it. Once a partition stops
(401, retries exhausted), the task sends none of its later partitions, and neither do the other
tasks of the run on the same machine (a note in its temporary directory tells them): so a wrong
secret or an unreachable Mixpanel costs a round of requests per task sending at that moment, not
one per partition. Those partitions are `unsent`, and a resume sends them. A task that Spark runs
again (it failed after a partition stopped) does not heed its own first attempt's note: that
attempt's rows are not kept, so it sends again, and its partitions' outcomes give their own cause.

Only module-level functions and frozen settings cross to the executors (jobs/ runs as __main__ and
cannot be pickled by reference).
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyspark import TaskContext
from pyspark.sql import types as T

from mp_spark import LOG_FORMAT
from mp_spark.batching import Chunk, batches_from_chunks
from mp_spark.config import ConfigError
from mp_spark.endpoints import Endpoint
from mp_spark.sender import BatchSender, SenderSettings, SendStopped
from mp_spark.tally import FATAL, OK, OUTCOME_SCHEMA, REJECTION_FIELDS, UNSENT, PartitionOutcome, Rejection, Tally
from mp_spark.transport import DryRunTransport, RequestsTransport, Transport

OUTCOME, REJECTION, INVALID, SAMPLE, PROFILE = "outcome", "rejection", "invalid", "sample", "profile"
SAMPLES_PER_PARTITION = 5  # a dry run's preview shows the first of them
PROFILE_ROW_BYTES = 4_000_000  # profile lines per output row (Spark Connect's messages stop at 128 MiB)
# What the sending stage returns: outcome, rejection, invalid, sample and profile rows in one schema
# (`message` is both the outcome's and the rejection's).
SENT_SCHEMA = T.StructType([
    T.StructField("record", T.StringType()),
    *OUTCOME_SCHEMA.fields,
    *[T.StructField(name, T.StringType()) for name in REJECTION_FIELDS if name != "message"],
    T.StructField("profile", T.StringType()),
])
_ARROW_TYPES = {T.LongType(): pa.int64(), T.StringType(): pa.string(), T.DoubleType(): pa.float64()}
SENT_ARROW_SCHEMA = pa.schema([(f.name, _ARROW_TYPES[f.dataType]) for f in SENT_SCHEMA.fields])
# The sending task's input columns, in this order: the partition index; the record's JSON line with its
# newline, or null for a record validation set aside; 1 where a sent record had a value cut to fit
# Mixpanel's limits, else 0; for a record set aside, why (field, message), its key and its line; and
# only in a dry run, the fingerprints of a record in the preview's sample (else null).
SENDER_INPUT = ("partition", "line", "trimmed", "field", "message", "insert_id", "event", "profile")
PROFILE_AT = SENDER_INPUT.index("profile")
STOPPED_NOTES = Path(tempfile.gettempdir()) / "mp-spark-stopped"  # a folder per attempt, a file per task that stopped


def ready_worker(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Nothing but this module's imports, which its worker keeps: Spark reuses the worker for a
    sending task, which then starts at once."""
    for _ in record_batches:
        pass
    yield pa.RecordBatch.from_pydict({"ready": [True]})


def partition_sender(
    endpoint: Endpoint, settings: SenderSettings, attempt: str, *, dry_run: bool
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function a task runs on its partitions: one connection pool per task, one sender per partition."""

    def send_task(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        log_in_the_drivers_format()
        task = this_task()
        failed: str | None = None  # why no partition can be sent from this task
        stopped: str | None = None  # why this attempt sends no more partitions
        transport: Transport | None = None
        try:
            # An executor's own environment (spark.executorEnv.*) may name a CA bundle it does not have.
            transport = DryRunTransport(endpoint.accepted) if dry_run else \
                RequestsTransport(pool_size=settings.in_flight)
        except ConfigError as exc:
            failed = f"on an executor: {exc}"
        try:
            for index, slices in itertools.groupby(partition_slices(record_batches), key=lambda s: s[0]):
                records = (record_batch for _, record_batch in slices)
                if failed is not None:  # every partition fails alike
                    outcome = unsent_partition(index, records, FATAL, failed)
                elif (stopped := stopped or stopped_elsewhere(attempt, task)) is not None:
                    outcome = unsent_partition(index, records, UNSENT, f"not sent: {stopped}; a resume sends it")
                else:
                    outcome = yield from send_partition(index, records, endpoint, settings, transport,
                                                        samples=SAMPLES_PER_PARTITION if dry_run else 0)
                    if outcome.status != OK:
                        stopped = f"partition {index} stopped the run before it ({outcome.status})"
                        note_stop(attempt, task, stopped)
                yield outcome_row(outcome)
        finally:
            if transport is not None:
                transport.close()

    return send_task


def log_in_the_drivers_format() -> None:
    """Give this Python worker's warnings (a request retried, say) the driver's time, level and logger:
    with no handler, Python writes the bare message to the executor's stderr. Once per worker."""
    logger = logging.getLogger("mp_spark")
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)


def this_task() -> str:
    """The task's name, the same in each of its attempts: its stage and its index there."""
    context = TaskContext.get()
    return f"{context.stageId()}.{context.partitionId()}"


def stopped_elsewhere(attempt: str, task: str) -> str | None:
    """Why a partition of this attempt stopped on this machine in another task, if one did."""
    try:
        notes = [note for note in (STOPPED_NOTES / attempt).iterdir()
                 if note.name != task and not note.name.startswith(".")]  # not a draft
        return notes[0].read_text() if notes else None
    except OSError:
        return None


def note_stop(attempt: str, task: str, why: str) -> None:
    try:
        notes = STOPPED_NOTES / attempt
        notes.mkdir(parents=True, exist_ok=True)
        draft = notes / f".{task}.{os.getpid()}"
        draft.write_text(why)
        draft.replace(notes / task)  # whole, or not at all, to a reader
    except OSError:  # a read-only temporary directory: later tasks send, and stop, on their own
        pass


def partition_slices(record_batches: Iterator[pa.RecordBatch]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """The input cut where the partition index changes: (index, rows of that partition)."""
    for record_batch in record_batches:
        if record_batch.num_rows == 0:
            continue
        partitions = record_batch.column(0)
        changes = pc.indices_nonzero(pc.not_equal(partitions[1:], partitions[:-1])).to_pylist()
        starts = [0, *(i + 1 for i in changes)]
        for start, end in zip(starts, [*starts[1:], record_batch.num_rows], strict=True):
            yield partitions[start].as_py(), record_batch.slice(start, end - start)


def send_partition(index: int, record_batches: Iterator[pa.RecordBatch], endpoint: Endpoint,
                   settings: SenderSettings, transport: Transport, samples: int = 0) -> Iterator[pa.RecordBatch]:
    """Send one partition's lines; yields its rejection and invalid rows (and in a dry run its first
    `samples` lines and its records' profile rows), and returns its outcome."""
    started = time.monotonic()
    seen = {"lines": 0, "invalid": 0, "trimmed": 0}
    set_aside: list[pa.RecordBatch] = []  # yielded between the sender's answers

    def chunks() -> Iterator[Chunk]:
        for record_batch in record_batches:
            # Only a dry run of events has the profile column.
            profiles = record_batch.column(PROFILE_AT) if record_batch.num_columns > PROFILE_AT else None
            if profiles is not None and profiles.null_count < len(profiles):
                set_aside.append(profile_rows(index, profiles.drop_null()))
            lines = record_batch.column(1)
            if lines.null_count:
                set_aside.append(invalid_rows(index, record_batch))
                lines = lines.drop_null()
            if seen["lines"] < samples:
                set_aside.append(sample_rows(index, lines.slice(0, samples - seen["lines"])))
            seen["lines"] += len(lines)
            seen["invalid"] += record_batch.num_rows - len(lines)
            seen["trimmed"] += pc.sum(record_batch.column(2)).as_py() or 0
            yield arrow_chunk(lines)

    sender = BatchSender(endpoint, settings, transport)
    status, message = OK, None
    try:
        batches = batches_from_chunks(chunks(), max_events=settings.max_batch_events,
                                      max_bytes=settings.max_batch_bytes)
        for rejections in sender.send(batches):
            yield from drain(set_aside)
            yield rejection_rows(index, rejections)
    except SendStopped as stopped:
        status, message = stopped.status, stopped.message
        for _ in chunks():  # the rest of the partition is not sent, but counted
            pass
    yield from drain(set_aside)
    sent = sender.tally
    tally = sent + Tally(invalid=seen["invalid"], trimmed=seen["trimmed"], unsent=seen["lines"] - sent.rows)
    return PartitionOutcome(index, tally, status, message, round(time.monotonic() - started, 3))


def unsent_partition(index: int, record_batches: Iterator[pa.RecordBatch], status: str, message: str
                     ) -> PartitionOutcome:
    """The outcome of a partition the task did not send: only how many records it holds."""
    return PartitionOutcome(index, Tally(unsent=sum(b.num_rows for b in record_batches)), status, message)


def drain(pending: list[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    while pending:
        yield pending.pop(0)


def outcome_row(outcome: PartitionOutcome) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([{"record": OUTCOME, **outcome.as_row()}], schema=SENT_ARROW_SCHEMA)


def rejection_rows(index: int, rejections: list[Rejection]) -> pa.RecordBatch:
    rows = [{"record": REJECTION, "index": index, "field": r.field, "message": r.message, "insert_id": r.insert_id,
             "event": r.event} for r in rejections]
    return pa.RecordBatch.from_pylist(rows, schema=SENT_ARROW_SCHEMA)


def invalid_rows(index: int, record_batch: pa.RecordBatch) -> pa.RecordBatch:
    """The rows validation set aside, as output rows, built by Arrow (a partition may hold many)."""
    invalid = record_batch.filter(pc.is_null(record_batch.column(1)))
    return output_rows(INVALID, index, invalid.num_rows, {
        name: invalid.column(SENDER_INPUT.index(name)) for name in ("field", "message", "insert_id", "event")})


def sample_rows(index: int, lines: pa.Array) -> pa.RecordBatch:
    return output_rows(SAMPLE, index, len(lines), {"event": lines})


def profile_rows(index: int, profiles: pa.Array) -> pa.RecordBatch:
    """The profile lines joined into rows, each of the lines that start in one PROFILE_ROW_BYTES of their
    text: a row each cost Spark's writer and reader more than the lines did, and a row of a whole batch
    of wide records might not fit a message."""
    lengths = pc.binary_length(profiles)
    row_of_line = pc.divide(pc.subtract(pc.cumulative_sum(lengths), lengths), PROFILE_ROW_BYTES)  # by its start
    starts = [0, *(i + 1 for i in pc.indices_nonzero(pc.not_equal(row_of_line[1:], row_of_line[:-1])).to_pylist())]
    rows = pa.ListArray.from_arrays(pa.array([*starts, len(profiles)], pa.int32()), profiles)
    joined = pc.binary_join(rows, pa.scalar("", profiles.type))  # string or large_string, as the input
    return output_rows(PROFILE, index, len(joined), {"profile": joined})


def output_rows(record: str, index: int, count: int, columns: dict[str, pa.Array]) -> pa.RecordBatch:
    """`count` output rows of one kind for one partition: the given columns, the others null."""
    given = {"record": pa.repeat(pa.scalar(record, pa.string()), count),
             "index": pa.repeat(pa.scalar(index, pa.int64()), count), **columns}
    return pa.RecordBatch.from_arrays([given.get(f.name, pa.nulls(count, f.type)) for f in SENT_ARROW_SCHEMA],
                                      schema=SENT_ARROW_SCHEMA)


def arrow_chunk(lines: pa.Array) -> Chunk:
    """The data buffer and offsets of an Arrow string array without nulls, copying neither."""
    if len(lines) == 0:
        return b"", [0]
    _validity, offsets, data = lines.buffers()[:3]
    code = "q" if pa.types.is_large_string(lines.type) else "i"  # 64- or 32-bit offsets
    positions = memoryview(offsets).cast(code)[lines.offset : lines.offset + len(lines) + 1]
    return memoryview(data), positions
