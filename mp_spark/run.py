"""The driver's side of a run: stage the records, check the credentials, send every partition from the
executors, and sum up what happened.

    read -> map, validate, serialize -> staging/ (one file per partition) -> plan -> one Spark job per
    partition, at most `tasks` at once -> outcome rows -> partitions/, rejected/, summary/

Each partition's job writes the rows its task returned (its outcome, and the records Mixpanel
refused) to `outcomes/`, and Spark's commit protocol keeps exactly one successful attempt of it; the
driver learns the outcome from the job's observed metrics, never from exception text. Only the
DataFrame and SparkSession APIs that classic Spark and Spark Connect share are used.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark.sql import Column, DataFrame, Observation, SparkSession
from pyspark.sql import functions as F

from mp_spark.batching import Batch
from mp_spark.config import Config, ConfigError, Credentials, MixpanelConfig
from mp_spark.endpoints import Endpoint, endpoint_for
from mp_spark.executor import OUTCOME, SENT_SCHEMA, partition_sender
from mp_spark.lookup import send_lookup_table
from mp_spark.plan import Partition, sending_phases, shuffle_partitions, staging_partitions
from mp_spark.preview import Previewer
from mp_spark.progress import Progress
from mp_spark.records import count_records, prepare_records, source_rows
from mp_spark.results import Manifest, RunFiles, Summary, refused_records, set_aside_records, summarize
from mp_spark.sender import BatchSender, SenderSettings, SendStopped
from mp_spark.session import prepare_executors
from mp_spark.tally import OK, OUTCOME_SCHEMA, PartitionOutcome
from mp_spark.transport import RequestsTransport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    run_id: str
    results_path: str
    dry_run: bool = False
    resume: bool = False  # send only the partitions the run has not sent yet


STAGED_COLUMNS = ("key", "line", "invalid", "trimmed")


class RunStopped(Exception):
    """The run stopped before it sent everything: `status` is FATAL (a config or credential problem
    that retrying cannot fix) or EXHAUSTED (Mixpanel or the network kept failing)."""

    def __init__(self, status: str, message: str, summary: Summary | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.summary = summary


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def run_job(spark: SparkSession, config: Config, credentials: Credentials | None, options: RunOptions,
            previewer: Previewer | None = None, rows: DataFrame | None = None) -> Summary:
    """Send every record of the source (or, resuming, every partition not sent yet) and write the results.

    A dry run's `previewer` is shown the records as they are staged. `rows`, when given, are sent
    instead of the configured source's (an incremental run's micro-batch).
    """
    started = time.monotonic()
    files = RunFiles(spark, options.results_path, options.run_id)
    endpoint = endpoint_for(config, credentials)
    if config.job.kind == "lookup_table":  # one request, from the driver
        summary, outcome = send_lookup_table(spark, config, endpoint, files, options.run_id, dry_run=options.dry_run)
        if outcome.status != OK:
            raise RunStopped(outcome.status, outcome.message or "", summary)
        return summary

    if options.resume:
        manifest = resumable(files.read_manifest(), options)
    else:
        manifest = Manifest(options.run_id, dataclasses.asdict(config), int(time.time() * 1000), options.dry_run)
        # Written first, so that an earlier run's manifest cannot outlive the staging this run replaces;
        # a resume of a run stopped before its staging was complete stages its records again.
        files.write_manifest(manifest)
    # Reading and mapping the source is analysis only: a config problem surfaces here, before any work.
    # A resumed run whose records were staged needs nothing from the source any more.
    if manifest.rows is None:
        source = source_rows(spark, config, rows)
        records = prepare_records(source, config, manifest.now_ms, tap=previewer.tap if previewer else None)
        phases = record_phases(records, config, manifest.now_ms)
    else:
        phases = None
    executors = prepare_executors(spark)
    check = None if options.dry_run else functools.partial(check_credentials, endpoint, config.mixpanel)
    if phases is None:
        if check:
            check([spark.read.parquet(files.staging)])
    else:
        extra = previewer.staged_columns(records) if previewer else []
        rows = stage_while_checking(spark, check and functools.partial(check, phases),
                                    lambda: stage(spark, source, phases, config, files, extra))
        manifest = dataclasses.replace(manifest, rows=rows, partitions=len(files.staging_files()))
        files.write_manifest(manifest)  # from here on a resume sends the staged records
        if previewer:
            previewer.staged(spark.read.parquet(files.staging))
    partitions = staging_partitions(files.staging_files())
    if options.resume and manifest.partitions and not partitions:
        raise ConfigError(f"--resume: run {manifest.run_id} has sent everything (its staging/ was cleared when "
                          "it finished): there is nothing to resume")
    if len(partitions) != manifest.partitions:
        raise ConfigError(f"--resume: {files.staging} holds {len(partitions)} partitions, the run staged "
                          f"{manifest.partitions}; start a new run instead")

    earlier = files.read_outcomes() if options.resume else []
    sent_before = {outcome.index: (attempt, outcome) for attempt, outcome in earlier if outcome.status == OK}
    if sent_before:
        log.info("resuming run %s: %d of %d partitions were sent before and are not sent again", options.run_id,
                 len(sent_before), len(partitions))
    attempt = new_run_id()
    progress = Progress(total_rows=manifest.rows, partitions=len(partitions),
                        finished_before=[outcome for _, outcome in sent_before.values()],
                        interval_s=config.job.progress_interval_s)
    sending = Sending(spark, files, endpoint, attempt, dry_run=options.dry_run, progress=progress)
    outcomes: list[PartitionOutcome] = []
    with progress.running():
        for phase in sending_phases(partitions, set(sent_before), cores=executors.cores,
                                    max_in_flight=config.mixpanel.max_in_flight):
            settings = SenderSettings.for_tasks(config.mixpanel, phase.tasks, options.run_id)
            if options.dry_run:  # nothing to pace without a server
                settings = dataclasses.replace(settings, pacing=False, max_events_per_second=None)
            log.info("sending %d partitions, %d at a time, %d requests in flight each", len(phase.partitions),
                     phase.tasks, settings.in_flight)
            outcomes += sending.send(phase.partitions, settings, phase.tasks)
            if any(o.status != OK for o in outcomes):
                break
    sent = {**sent_before, **{o.index: (attempt, o) for o in outcomes if o.status == OK}}
    failed = [o for o in outcomes if o.status != OK]
    summary = write_results(spark, files, manifest, sent, failed, options, resumed=len(sent_before),
                            imported_before=sum(o.tally.imported for _, o in sent_before.values()),
                            seconds=time.monotonic() - started)
    if failed:
        raise RunStopped(failed[0].status, failed[0].message or "", summary)
    return summary


def resumable(manifest: Manifest, options: RunOptions) -> Manifest:
    if manifest.dry_run:
        raise ConfigError(f"--resume: run {options.run_id} was a dry run, which sent nothing; start a new run instead")
    return manifest


def write_results(spark: SparkSession, files: RunFiles, manifest: Manifest,
                  sent: dict[int, tuple[str, PartitionOutcome]], failed: list[PartitionOutcome], options: RunOptions,
                  *, resumed: int, imported_before: int, seconds: float) -> Summary:
    """partitions/, rejected/ and summary/ for the whole run (every attempt of it); `sent` maps each sent
    partition to the attempt that sent it and its outcome."""
    outcomes = {index: outcome for index, (_, outcome) in sent.items()}
    summary = summarize(run_id=options.run_id, dry_run=options.dry_run, rows_read=manifest.rows,
                        partitions=manifest.partitions, outcomes=list(outcomes.values()), resumed=resumed,
                        imported_before=imported_before, seconds=seconds, results_path=files.path)
    files.write_partitions([*outcomes.values(), *(o for o in failed if o.index not in outcomes)])
    refused_in = {index: attempt for index, (attempt, outcome) in sent.items() if outcome.tally.rejected}
    files.write_rejected(
        *([set_aside_records(spark.read.parquet(files.staging))] if summary.invalid else []),
        *([refused_records(spark, files.outcomes, refused_in)] if refused_in else []),
    )
    files.write_summary(summary)
    if not summary.balanced:
        log.error("accounting mismatch: %d records staged, but %d imported, %d rejected and %d invalid",
                  summary.rows_read, summary.imported, summary.rejected, summary.invalid)
    if summary.complete:
        files.clear_staging()  # everything is sent; the run's copy of the source can go
    return summary


def record_phases(records: DataFrame, config: Config, now_ms: int) -> list[DataFrame]:
    """The records in the order they are sent: all at once, or with job.order recent_first the last
    `job.recent_days` first (Mixpanel advises importing the last weeks first: its autocomplete draws
    on the last 30 days)."""
    if config.job.order != "recent_first":
        return [records]
    is_recent = F.col("time") >= now_ms - config.job.recent_days * 86_400_000
    return [records.filter(is_recent), records.filter(~is_recent | F.col("time").isNull())]


def stage(spark: SparkSession, source: DataFrame, phases: list[DataFrame], config: Config, files: RunFiles,
          extra: list[Column]) -> int:
    """Write the records to staging/, each phase spread by `key` over partitions of about
    `job.records_per_partition` (one file each); the number of records written.

    The count is observed as the files are written (in the stage whose one successful attempt per
    partition Spark keeps), so it costs no pass of its own.
    """
    columns = [*STAGED_COLUMNS, *extra]
    per_partition = config.job.records_per_partition
    if len(phases) == 1:
        count = count_records(source, phases[0], config)
        spread = phases[0].select(columns).repartition(shuffle_partitions(count, per_partition), "key")
    else:
        spread = functools.reduce(DataFrame.unionByName, [
            records.select(columns).repartition(shuffle_partitions(records.count(), per_partition), "key")
            .withColumn("phase", F.lit(phase)) for phase, records in enumerate(phases)])
    written = Observation("mp-spark-staged")
    writer = spread.observe(written, F.count(F.lit(1)).alias("rows")).write.mode("overwrite")
    (writer.partitionBy("phase") if len(phases) > 1 else writer).parquet(files.staging)
    return written.get["rows"]


def stage_while_checking(spark: SparkSession, check: Callable[[], None] | None, stage_records: Callable[[], int]
                         ) -> int:
    """Stage the records while the credentials are checked on another thread: a big source takes long
    to stage, and wrong credentials should stop it at once; a small one should not wait for both in turn.
    A failed check interrupts the staging, and its reason is raised."""
    if check is None:
        return stage_records()
    tag = f"mp-spark-staging-{secrets.token_hex(4)}"
    failed: list[BaseException] = []

    def checking() -> None:
        try:
            check()
        except BaseException as exc:
            failed.append(exc)
            spark.interruptTag(tag)

    checker = threading.Thread(target=checking, name="mp-spark-credentials-check")
    checker.start()
    spark.addTag(tag)  # for the operations of this thread: the staging
    try:
        rows = stage_records()
    except Exception:
        checker.join()
        if failed:  # the reason the staging was interrupted
            raise failed[0] from None
        raise
    finally:
        spark.removeTag(tag)
    checker.join()
    if failed:
        raise failed[0]
    return rows


def check_credentials(endpoint: Endpoint, mixpanel: MixpanelConfig, phases: list[DataFrame]) -> None:
    """Send one record from the driver before any executor sends: wrong credentials cost one request,
    not one per task. Its `$insert_id` (or, for a profile update, its idempotence) makes sending it
    again with its partition harmless; it is the first record of the first phase, so the order of
    the phases holds."""
    if not mixpanel.check_credentials:
        return
    first = []
    for records in phases:
        first = first or records.filter(F.col("invalid").isNull()).select("line").limit(1).collect()
    if not first:
        return
    transport = RequestsTransport()
    try:
        sender = BatchSender(endpoint, SenderSettings.for_tasks(mixpanel), transport)
        for _ in sender.send([Batch.of_lines([first[0].line.encode("utf-8")])]):
            pass  # a refused record is fine here: it is sent, and accounted for, with its partition
    except SendStopped as stopped:
        raise RunStopped(stopped.status, stopped.message) from None
    finally:
        transport.close()


class Sending:
    """Runs one Spark job per partition, at most `tasks` at once, from as many driver threads.

    After the first partition that cannot be sent (401, retries exhausted) no new job starts; the
    running ones end with outcomes of their own (a task stops at its first 401 too), which are kept.
    A Spark failure, or Ctrl-C, interrupts them instead (their partitions count as not sent).
    """

    def __init__(self, spark: SparkSession, files: RunFiles, endpoint: Endpoint, attempt: str, *, dry_run: bool,
                 progress: Progress) -> None:
        self._spark = spark
        self._files = files
        self._endpoint = endpoint
        self._attempt = attempt
        self._dry_run = dry_run
        self._progress = progress
        self._tag = f"mp-spark-{attempt}"

    def send(self, partitions: tuple[Partition, ...], settings: SenderSettings, tasks: int
             ) -> list[PartitionOutcome]:
        pending = iter(partitions)
        lock = threading.Lock()
        outcomes: list[PartitionOutcome] = []
        failures: list[BaseException] = []
        stopping = threading.Event()  # no new partition starts
        interrupted = threading.Event()  # ... and the running ones were interrupted

        def interrupt() -> None:
            stopping.set()
            if not interrupted.is_set():
                interrupted.set()
                self._spark.interruptTag(self._tag)

        def send_some() -> None:
            self._spark.addTag(self._tag)  # tags are per thread
            while not stopping.is_set():
                with lock:
                    partition = next(pending, None)
                if partition is None:
                    return
                self._progress.sending()
                try:
                    outcome = self.send_partition(partition, settings)
                except Exception as exc:  # a Spark failure, or this run's own interruption of the job
                    self._progress.finished(None)
                    if not interrupted.is_set():
                        failures.append(exc)
                        interrupt()
                    return
                self._progress.finished(outcome)
                with lock:
                    outcomes.append(outcome)
                if outcome.status != OK:
                    log.error("partition %d: %s: %s", outcome.index, outcome.status, outcome.message)
                    stopping.set()

        threads = [threading.Thread(target=send_some, name=f"mp-spark-send-{i}") for i in range(tasks)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except BaseException:  # Ctrl-C or SIGTERM on the driver: stop the jobs rather than wait for them
            interrupt()
            raise
        if failures:
            raise failures[0]
        return sorted(outcomes, key=lambda o: o.index)

    def send_partition(self, partition: Partition, settings: SenderSettings) -> PartitionOutcome:
        """One Spark job: the partition's staging file, through one task, to its outcome rows."""
        valid = F.col("invalid").isNull()
        lines = self._spark.read.parquet(partition.path).coalesce(1).select(
            F.when(valid, F.concat("line", F.lit("\n"))).alias("line"),
            F.when(valid & F.col("trimmed"), 1).otherwise(0).cast("byte").alias("trimmed"),
        )
        sender = partition_sender(self._endpoint, settings, partition.index, dry_run=self._dry_run)
        observed = Observation(f"mp-spark-partition-{partition.index}")
        is_outcome = F.col("record") == OUTCOME
        metrics = [F.count_if(is_outcome).alias("outcomes"),
                   *[F.max(F.when(is_outcome, F.col(f.name))).alias(f.name) for f in OUTCOME_SCHEMA.fields]]
        lines.mapInArrow(sender, SENT_SCHEMA).observe(observed, *metrics).write.mode("append").parquet(
            f"{self._files.outcome_path(self._attempt)}/partition={partition.index}")
        row = observed.get
        if row["outcomes"] != 1:
            raise RuntimeError(f"partition {partition.index}: its task returned {row['outcomes']} outcomes, not 1")
        return PartitionOutcome.from_row(row)

