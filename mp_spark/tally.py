"""What happened to a partition's records, as data: counts that add up, and one outcome per partition.

The executors return these as rows (see `mp_spark.executor`), the driver reads them back and
decides the exit code from them, and the summary is their sum. The row schemas come from the
dataclass fields, so a new counter is one new field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pyspark.sql import types as T

# A partition's status: sent; retrying cannot help; retries ran out; not sent, because a partition
# before it in the same task stopped (its records are counted in `unsent`, for a resume to send).
OK, FATAL, EXHAUSTED, UNSENT = "ok", "fatal", "exhausted", "unsent"
# Marks a count of what the HTTP cost, which the summary takes from every partition, sent or not.
TRAFFIC = {"traffic": True}


@dataclass(frozen=True)
class Tally:
    """Counts for some records; `a + b` adds them field by field."""

    rows: int = 0  # records sent: imported + rejected
    imported: int = 0
    rejected: int = 0  # refused by Mixpanel
    invalid: int = 0  # set aside by the job's own validation, never sent
    trimmed: int = 0  # sent with a value cut to fit Mixpanel's limits
    # batches delivered (answered, or refused whole); halves of a split count apart
    batches: int = dataclasses.field(default=0, metadata=TRAFFIC)
    requests: int = dataclasses.field(default=0, metadata=TRAFFIC)  # every HTTP attempt
    retries: int = dataclasses.field(default=0, metadata=TRAFFIC)
    raw_bytes: int = dataclasses.field(default=0, metadata=TRAFFIC)
    gzip_bytes: int = dataclasses.field(default=0, metadata=TRAFFIC)
    unsent: int = 0  # records of a partition that stopped, or never started, left for a resume to send

    def __add__(self, other: Tally) -> Tally:
        return Tally(*(getattr(self, name) + getattr(other, name) for name in TALLY_FIELDS))


TALLY_FIELDS = tuple(f.name for f in dataclasses.fields(Tally))
TRAFFIC_FIELDS = tuple(f.name for f in dataclasses.fields(Tally) if f.metadata.get("traffic"))


@dataclass(frozen=True)
class Rejection:
    """One record not imported, with the reason and the line exactly as it was (or would have been) sent."""

    field: str | None
    message: str
    insert_id: str | None  # for profile updates: the distinct_id or group id
    event: str | None


@dataclass(frozen=True)
class PartitionOutcome:
    """How one partition went: its tally, and whether it was sent (`ok`) or why not."""

    index: int
    tally: Tally
    status: str = OK
    message: str | None = None  # for `fatal` and `exhausted`: what failed
    seconds: float = 0.0

    @property
    def size(self) -> int:
        """How many records the partition holds, sent or not."""
        return self.tally.rows + self.tally.invalid + self.tally.unsent

    def as_row(self) -> dict:
        """The flat row of `partitions/` (and of the outcome rows the executors return)."""
        return {"index": self.index, **dataclasses.asdict(self.tally), "status": self.status,
                "message": self.message, "seconds": self.seconds}

    @classmethod
    def from_row(cls, row: dict) -> PartitionOutcome:
        return cls(index=row["index"], tally=Tally(**{name: row[name] or 0 for name in TALLY_FIELDS}),
                   status=row["status"], message=row["message"], seconds=row["seconds"])


OUTCOME_SCHEMA = T.StructType([
    T.StructField("index", T.LongType()),
    *[T.StructField(name, T.LongType()) for name in TALLY_FIELDS],
    T.StructField("status", T.StringType()),
    T.StructField("message", T.StringType()),
    T.StructField("seconds", T.DoubleType()),
])

REJECTION_FIELDS = tuple(f.name for f in dataclasses.fields(Rejection))


def total(outcomes: list[PartitionOutcome]) -> Tally:
    return sum((o.tally for o in outcomes), Tally())
