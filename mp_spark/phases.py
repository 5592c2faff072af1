"""Which phase each record is sent in. A run sends its records phase after phase, one Spark job each:

- in one phase, by default;
- with `job.order: recent_first`, the last `job.recent_days` days, then the rest (Mixpanel advises
  importing the last weeks first: its autocomplete draws on the last 30 days);
- with `job.phase_days`, in phases of that many days of event time, newest first, back from
  `job.time_to` (or from now; with recent_first, from the start of the recent days, which go first).

A phase's outcomes are kept once its job ends, whatever the cluster's committer. On a cluster a task
sends many partitions in turn and keeps their outcomes only when it ends, so phases of days bound
what a stopped run sends again, and the progress line moves at least once a phase.

The oldest phase also holds the records with no time or a time before 1971 (set aside as invalid),
and those older than the oldest phase counted: how many phases there are is counted with the
records, and the manifest keeps it (as its phase counts), so a resume splits the records as the run
did. Only phases with records cost a Spark job.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from mp_spark.config import JobConfig
from mp_spark.validation import EPOCH_MS_1971

DAY_MS = 86_400_000


def phase_number(job: JobConfig, now_ms: int) -> Column | None:
    """Each record's phase, by its `time` in ms (null for a record with no time or one Mixpanel would
    refuse as too old, whose phase is the oldest); None when the run has one phase."""
    time = F.col("time")
    recent_first = job.order == "recent_first"
    recent_start = now_ms - job.recent_days * DAY_MS
    if job.phase_days is None:
        return F.when(time >= recent_start, 0).otherwise(1) if recent_first else None
    end = min(recent_start if recent_first else now_ms, job.time_to_ms or now_ms)
    # Phase k (counted from the newest) holds [end - (k + 1) days, end - k days); later times go in the first.
    back = F.greatest(F.floor((F.lit(end - 1) - time) / (job.phase_days * DAY_MS)), F.lit(0))
    # A time before 1971 is invalid, and counting back to it (or to a garbage time far before it)
    # could make millions of phases; such records are set aside in the oldest phase instead.
    if recent_first:
        return F.when(time >= recent_start, 0).when(time >= EPOCH_MS_1971, back + 1)
    return F.when(time >= EPOCH_MS_1971, back)


def phase_counts(records: DataFrame, phase: Column, job: JobConfig) -> list[int]:
    """The records of each phase, counted in one pass over them: phases from the newest to the oldest
    record's (both of recent_first's, even if empty), the records with no time in the oldest."""
    counted = {row["phase"]: row["count"] for row in records.groupBy(phase.alias("phase")).count().collect()}
    least = 2 if job.order == "recent_first" else 1
    phases = max([least - 1, *(number for number in counted if number is not None)]) + 1
    counts = [counted.get(number, 0) for number in range(phases)]
    counts[-1] += counted.get(None, 0)
    return counts


def phase_records(records: DataFrame, phase: Column | None, phases: int, number: int) -> DataFrame:
    """The records of phase `number` of the run's `phases` (made only for a phase that is sent: a run
    over years in phases of a day has thousands, most of them empty)."""
    if phase is None:
        return records
    oldest = phases - 1
    return records.filter(phase == number) if number < oldest else records.filter((phase >= oldest) | phase.isNull())
