"""Everything a run keeps in `job.results_path`, read and written with Spark's own readers and writers,
so the path can be anything Spark reaches (local, s3://, abfss://, gs://, /Volumes/...) from a classic
session or a Spark Connect one:

- `run/`: the run's manifest (its config, which holds no secret, the moment it took as "now", and once
  its records are counted, how many each phase has and over how many partitions they are spread):
  what `--resume` starts from. A resume reads the source again, which must not have changed.
- `outcomes/run=<run id>/attempt=<id>/phase=<n>/`: what the sending tasks returned, one outcome row
  per partition and the records Mixpanel refused or validation set aside; each task's rows are
  committed by Spark's writer when it finishes. The partitions with an `ok` outcome are the ones a
  resumed run does not send again. (Under its own run id, so that a results path used again needs no
  clearing first.)
- `partitions/`, `rejected/`, `summary/`: the results users query (JSON), written at the end.
- `error/`: the traceback of a run that stopped on something unexpected.

Small documents (the manifest, the summary, the error) are one-part text datasets: `spark.read.text`
reads them back whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mp_spark.config import ConfigError
from mp_spark.executor import INVALID, OUTCOME, PROFILE, REJECTION, SAMPLE, SENT_SCHEMA
from mp_spark.tally import OK, OUTCOME_SCHEMA, TALLY_FIELDS, TRAFFIC_FIELDS, PartitionOutcome, total


@dataclass(frozen=True)
class Manifest:
    run_id: str
    config: dict  # the parsed config as plain data (dataclasses.asdict), which parse_config reads back
    now_ms: int  # validation and job.order recent_first judge rows by this moment, in every attempt
    dry_run: bool = False  # nothing was sent: there is nothing to resume
    phase_rows: list[int] | None = None  # records counted in each phase; None until counted
    phase_partitions: list[int] | None = None  # how many partitions each phase's records are spread over


@dataclass(frozen=True)
class Summary:
    run_id: str
    dry_run: bool
    complete: bool  # every partition was sent; false for a run that stopped (finish it with --resume)
    rows_read: int  # records: source rows (in the time window), or profile updates
    unsent: int  # of those, the records of partitions not (yet) sent
    imported: int
    rejected: int
    invalid: int
    trimmed: int  # of the records sent, those with a value cut to fit Mixpanel's limits
    partitions: int
    resumed_partitions: int  # of those, the ones an earlier attempt of the run sent
    batches: int
    requests: int
    retries: int
    raw_bytes: int
    gzip_bytes: int
    seconds: float  # this attempt's wall time
    events_per_second: float  # records imported by this attempt per second
    results_path: str

    @property
    def balanced(self) -> bool:
        """The accounting identity: every row read was imported, rejected, set aside, or is still to send."""
        return self.rows_read == self.imported + self.rejected + self.invalid + self.unsent


def summarize(*, run_id: str, dry_run: bool, rows_read: int, partitions: int, outcomes: list[PartitionOutcome],
              resumed: int, imported_before: int, seconds: float, results_path: str) -> Summary:
    """The run's summary: the sum of its partitions' latest outcomes (this attempt's and earlier ones').
    Records count from the sent partitions only, and a partition that stopped counts whole as unsent,
    since a resume sends it whole; the HTTP counters (requests, retries, bytes) count every outcome's."""
    sent = [o for o in outcomes if o.status == OK]
    records, traffic = total(sent), total(outcomes)
    return Summary(
        run_id=run_id, dry_run=dry_run, complete=len(sent) == partitions, rows_read=rows_read,
        unsent=rows_read - (records.rows + records.invalid),
        **{name: getattr(traffic if name in TRAFFIC_FIELDS else records, name)
           for name in TALLY_FIELDS if name not in ("rows", "unsent")},
        partitions=partitions, resumed_partitions=resumed, seconds=round(seconds, 3),
        events_per_second=round((records.imported - imported_before) / seconds, 1) if seconds else 0.0,
        results_path=results_path,
    )


def default_results_root() -> str:
    """Where runs keep their results unless job.results_path says otherwise."""
    return os.path.abspath("mp_spark_runs")


def default_results_path(run_id: str) -> str:
    return os.path.join(default_results_root(), run_id)


def add_up(run_id: str, summaries: list[Summary], *, seconds: float, results_path: str) -> Summary:
    """One summary for several runs (an incremental run's micro-batches): their counts added up."""
    counted = [f.name for f in dataclasses.fields(Summary) if f.type == "int"]
    totals = {name: sum(getattr(s, name) for s in summaries) for name in counted}
    return Summary(run_id=run_id, dry_run=False, complete=all(s.complete for s in summaries), **totals,
                   seconds=round(seconds, 3), results_path=results_path,
                   events_per_second=round(totals["imported"] / seconds, 1) if seconds else 0.0)


GLOB_CHARACTERS = re.compile(r"([\\\[\]{}*?])")  # what Spark's readers expand in a path; a backslash escapes it


def read_text(spark: SparkSession, path: str) -> str:
    """A whole text file (or one-part text dataset) anywhere Spark reads; OSError when it is not there.
    The path is taken as it is written, as Spark's writers and checkpoints take it, not as a glob."""
    try:
        rows = spark.read.text(GLOB_CHARACTERS.sub(r"\\\1", path), wholetext=True).collect()
    except AnalysisException as exc:
        raise OSError(f"cannot read {path}: {str(exc).strip().splitlines()[0]}") from None
    if not rows:
        raise OSError(f"cannot read {path}: it is empty")
    return "".join(row.value for row in rows)


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write (or replace) a one-part text dataset."""
    literal_rows(spark, [{"value": text}], "value string").write.mode("overwrite").text(path)


def literal_rows(spark: SparkSession, rows: list[dict], schema: str) -> DataFrame:
    """A one-partition DataFrame of a few rows, as a literal in the plan. Unlike createDataFrame, which
    on classic Spark sends the rows through a Python worker, this runs in the JVM alone: it is the
    driver's small writes that a short run pays for first."""
    parsed = F.from_json(F.lit(json.dumps(rows)), f"array<struct<{schema}>>")
    return spark.range(0, 1, 1, numPartitions=1).select(F.inline(parsed))


def ddl(schema: T.StructType) -> str:
    """A schema's fields as literal_rows takes them."""
    return ", ".join(f"`{field.name}` {field.dataType.simpleString()}" for field in schema.fields)


REJECTED_SCHEMA = ("stage string, field string, message string, insert_id string, partition long, "
                   "event string")  # stage: "validation" (set aside by the job) or "mixpanel" (refused)


def set_aside_records(records: DataFrame) -> DataFrame:
    """rejected/ rows for the records validation set aside (`invalid`, `key` and `line` columns) of a
    lookup table, which is sent from the driver."""
    return records.filter(F.col("invalid").isNotNull()).select(
        F.lit("validation").alias("stage"), F.col("invalid.field").alias("field"),
        F.col("invalid.message").alias("message"), F.col("key").alias("insert_id"),
        F.lit(None).cast("long").alias("partition"), F.col("line").alias("event"),
    )


def rejected_records(spark: SparkSession, outcomes: str, sent_in: dict[int, str]) -> DataFrame:
    """rejected/ rows for the records validation set aside and those Mixpanel refused, in the attempt
    that sent each partition (`sent_in`: partition index -> attempt): a partition stopped midway and
    sent again later refused its records twice, and only the second time counts."""
    attempts = literal_rows(spark, [{"index": i, "attempt": a} for i, a in sent_in.items()],
                            "index long, attempt string")
    not_imported = spark.read.parquet(outcomes).filter(F.col("record").isin(REJECTION, INVALID))
    return not_imported.join(F.broadcast(attempts), ["index", "attempt"]).select(
        F.when(F.col("record") == INVALID, "validation").otherwise("mixpanel").alias("stage"), "field", "message",
        "insert_id", F.col("index").alias("partition"), "event",
    )


def outcome_rows(sent: DataFrame) -> list:
    return sent.filter(F.col("record") == OUTCOME).drop("record", "field", "insert_id", "event").collect()


class RunFiles:
    """The paths of one run's results, and the reads and writes of each."""

    def __init__(self, spark: SparkSession, results_path: str, run_id: str = "") -> None:
        self._spark = spark
        self._run_id = run_id
        self.path = results_path.rstrip("/")
        self.outcomes = f"{self.path}/outcomes/run={run_id}"

    def read_summary(self) -> Summary | None:
        """The run's summary, once written (it goes last, so the results beside it are whole); None before,
        or when the summary there is another run's (a results path used again)."""
        try:
            written = json.loads(read_text(self._spark, f"{self.path}/summary"))
        except OSError:
            return None
        names = [f.name for f in dataclasses.fields(Summary)]
        if written.get("run_id") != self._run_id or any(name not in written for name in names):
            return None  # another run's, or another kind of summary
        return Summary(**{name: written[name] for name in names})

    def has_summary(self) -> bool:
        """Whether the summary of the whole run is written, not that of an attempt that stopped."""
        summary = self.read_summary()
        return summary is not None and summary.complete

    def write_manifest(self, manifest: Manifest) -> None:
        write_text(self._spark, f"{self.path}/run", json.dumps(dataclasses.asdict(manifest)))

    def read_manifest(self) -> Manifest:
        try:
            text = read_text(self._spark, f"{self.path}/run")
        except OSError:
            raise ConfigError(f"--resume: no run to resume at {self.path} (it has no run/ manifest)") from None
        return Manifest(**json.loads(text))

    def phase_path(self, attempt: str, phase: int) -> str:
        return f"{self.outcomes}/attempt={attempt}/phase={phase}"

    def read_outcomes(self) -> list[tuple[str, PartitionOutcome]]:
        """Every outcome row of every attempt, as (attempt, outcome)."""
        try:
            sent = self._spark.read.parquet(self.outcomes)
            columns = sent.columns  # analysed here: on Spark Connect, reading is lazy
        except AnalysisException:  # nothing was ever sent
            return []
        if "attempt" not in columns:
            return []
        return [(row["attempt"], PartitionOutcome.from_row(row.asDict())) for row in outcome_rows(sent)]

    def read_phase(self, attempt: str, phase: int) -> tuple[list[PartitionOutcome], pa.Table]:
        """What one attempt's tasks returned for one phase but the records not imported (rejected/ reads
        those), in one Spark job: its outcomes by partition index, and every row read, a dry run's sample
        and profile rows among them (left where they are: a copy of a dry run's 14 MB of profile rows
        took the driver 0.3 s, the memory new to it)."""
        rows = self._spark.read.parquet(self.phase_path(attempt, phase)).filter(
            F.col("record").isin(OUTCOME, SAMPLE, PROFILE)).drop("field", "insert_id").toArrow()
        outcome_rows = rows.drop_columns(["event", "profile"]).filter(pc.equal(rows["record"], OUTCOME))
        outcomes = [PartitionOutcome.from_row(row) for row in outcome_rows.to_pylist()]
        return sorted(outcomes, key=lambda o: o.index), rows

    def add_outcomes(self, attempt: str, phase: int, outcomes: list[PartitionOutcome]) -> None:
        """Outcome rows beside those an attempt's tasks returned for a phase (the driver's own)."""
        rows = [{"record": OUTCOME, **o.as_row()} for o in outcomes]
        literal_rows(self._spark, rows, ddl(SENT_SCHEMA)).write.mode("append").parquet(self.phase_path(attempt, phase))

    def write_partitions(self, outcomes: list[PartitionOutcome]) -> None:
        rows = [o.as_row() for o in sorted(outcomes, key=lambda o: o.index)]
        literal_rows(self._spark, rows, ddl(OUTCOME_SCHEMA)).write.mode("overwrite").json(f"{self.path}/partitions")

    def write_rejected(self, *parts: DataFrame) -> None:
        """rejected/: the records not imported, from `set_aside_records` and `refused_records` (written by
        Spark, never collected; with no parts, an empty dataset replaces an earlier run's)."""
        rejected = parts[0] if parts else literal_rows(self._spark, [], REJECTED_SCHEMA)
        for part in parts[1:]:
            rejected = rejected.unionByName(part)
        rejected.write.mode("overwrite").json(f"{self.path}/rejected")

    def write_summary(self, summary: Summary) -> None:
        write_text(self._spark, f"{self.path}/summary", json.dumps(dataclasses.asdict(summary)))

    def write_error(self, text: str) -> None:
        write_text(self._spark, f"{self.path}/error", text)
