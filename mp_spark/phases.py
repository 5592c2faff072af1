"""Which phase each record is sent in. A run sends its records phase after phase, one Spark job each:

- in one phase, by default;
- with `job.order: recent_first`, the last `job.recent_days` days, then the rest (Mixpanel advises
  importing the last weeks first: its autocomplete draws on the last 30 days);
- with `job.phase_days`, in phases of that many days of event time, newest first, back from
  `job.time_to` (or from now; with recent_first, from the start of the recent days, which go first).

A phase's outcomes are kept once its job ends, whatever the cluster's committer. On a cluster a task
sends many partitions in turn and keeps their outcomes only when it ends, so phases of days bound
what a stopped run sends again, and the progress line moves at least once a phase.

The oldest phase also holds the records with no time (set aside as invalid) and those older than the
oldest phase counted: how many phases there are is counted with the records, and the manifest keeps
it (as its phase counts), so a resume splits the records as the run did.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from mp_spark.config import JobConfig

DAY_MS = 86_400_000


def phase_number(job: JobConfig, now_ms: int) -> Column | None:
    """Each record's phase, by its `time` in ms (null for a record with no time, whose phase is the
    oldest); None when the run has one phase."""
    time = F.col("time")
    recent_first = job.order == "recent_first"
    recent_start = now_ms - job.recent_days * DAY_MS
    if job.phase_days is None:
        return F.when(time >= recent_start, 0).otherwise(1) if recent_first else None
    end = min(recent_start if recent_first else now_ms, job.time_to_ms or now_ms)
    # Phase k (counted from the newest) holds [end - (k + 1) days, end - k days); later times go in the first.
    back = F.greatest(F.floor((F.lit(end - 1) - time) / (job.phase_days * DAY_MS)), F.lit(0))
    if recent_first:
        return F.when(time >= recent_start, 0).when(time.isNotNull(), back + 1)
    return F.when(time.isNotNull(), back)


def phase_counts(records: DataFrame, phase: Column, job: JobConfig) -> list[int]:
    """The records of each phase, counted in one pass over them: phases from the newest to the oldest
    record's (both of recent_first's, even if empty), the records with no time in the oldest."""
    counted = {row["phase"]: row["count"] for row in records.groupBy(phase.alias("phase")).count().collect()}
    least = 2 if job.order == "recent_first" else 1
    phases = max([least - 1, *(number for number in counted if number is not None)]) + 1
    counts = [counted.get(number, 0) for number in range(phases)]
    counts[-1] += counted.get(None, 0)
    return counts


def phase_records(records: DataFrame, phase: Column | None, phases: int) -> list[DataFrame]:
    """The records of each of the run's `phases`, in the order they are sent."""
    if phase is None:
        return [records]
    oldest = phases - 1
    return [records.filter(phase == number) for number in range(oldest)] + \
        [records.filter((phase >= oldest) | phase.isNull())]
