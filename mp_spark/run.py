"""The driver's side of a run: count the records, check the credentials, send every partition from the
executors, and sum up what happened.

    read -> map, validate, serialize -> count -> plan -> per phase, one Spark job: spread by key over
    partitions -> at most `tasks` sending at once -> outcome rows -> partitions/, rejected/, summary/

The sending tasks' rows (an outcome per partition, and the records Mixpanel refused or validation
set aside) are written to `outcomes/` by Spark's writer, whose commit protocol keeps exactly one
successful attempt of each task; the driver reads back the outcome rows, never exception text.
Sending starts as soon as the shuffle is written: nothing is staged. Only the DataFrame and
SparkSession APIs that classic Spark and Spark Connect share are used, but for the task counts
that progress lines read (mp_spark.progress).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeVar

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from mp_spark import counted
from mp_spark.batching import Batch
from mp_spark.config import Config, ConfigError, Credentials, MixpanelConfig
from mp_spark.endpoints import Endpoint, endpoint_for
from mp_spark.executor import SENT_SCHEMA, partition_sender
from mp_spark.lookup import send_lookup_table
from mp_spark.phases import phase_counts, phase_number, phase_records
from mp_spark.plan import Phase, sending_phases, shuffle_partitions
from mp_spark.preview import Previewer, passed_on_parts
from mp_spark.progress import Progress, task_counter
from mp_spark.records import count_records, prepare_records, source_rows
from mp_spark.results import Manifest, RunFiles, Summary, rejected_records, summarize
from mp_spark.sender import BatchSender, SenderSettings, SendStopped
from mp_spark.session import interrupt_jobs, jobs_tagged, prepare_executors, start_python_workers_meanwhile
from mp_spark.tally import OK, UNSENT, PartitionOutcome, Tally
from mp_spark.transport import RequestsTransport

T = TypeVar("T")
INTERRUPT_EVERY_S = 0.25  # after a failed credential check, until the work stops

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    run_id: str
    results_path: str
    dry_run: bool = False
    resume: bool = False  # send only the partitions the run has not sent yet
    # The incremental run a micro-batch belongs to: it checked the executors once, and its tasks pass
    # their pacing on from one micro-batch to the next, as from one task to the next.
    stream_run_id: str | None = None


class RunStopped(Exception):
    """The run stopped before it sent everything: `status` is FATAL (a config or credential problem
    that retrying cannot fix) or EXHAUSTED (Mixpanel or the network kept failing). `summary` is None
    when it stopped before sending anything, at the credential check."""

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

    A dry run's `previewer` is shown what would be sent. `rows`, when given, are sent instead of the
    configured source's (an incremental run's micro-batch).
    """
    started = time.monotonic()
    files = RunFiles(spark, options.results_path, options.run_id)
    endpoint = endpoint_for(config, credentials)
    if config.job.kind == "lookup_table":  # one request, from the driver
        summary, outcome = send_lookup_table(spark, config, endpoint, files, options.run_id, dry_run=options.dry_run)
        if outcome.status != OK:
            raise RunStopped(outcome.status, outcome.message or "", summary)
        return summary

    manifest = resumable(files.read_manifest(), options) if options.resume else \
        Manifest(options.run_id, dataclasses.asdict(config), int(time.time() * 1000), options.dry_run)
    # Reading and mapping the source is analysis only: a config problem surfaces here, before any work.
    source = source_rows(spark, config, rows)
    records = prepare_records(source, config, manifest.now_ms)
    phase_of = phase_number(config.job, manifest.now_ms)
    recent = phase_of == 0 if config.job.order == "recent_first" else None
    check = functools.partial(check_credentials, endpoint, config.mixpanel, records, recent) \
        if config.mixpanel.check_credentials and not options.dry_run else None
    earlier = files.read_outcomes() if options.resume else []
    sent_before = {outcome.index: (attempt, outcome) for attempt, outcome in earlier if outcome.status == OK}
    attempt = new_run_id()

    def count_and_plan(check_ended: Callable[[], None]) -> tuple[Manifest, list[Phase]]:
        executors = prepare_executors(spark, probe=options.stream_run_id is None)
        tasks = min(executors.cores, config.mixpanel.max_in_flight)
        with_counts = manifest if manifest.phase_rows is not None else \
            count_phases(manifest, source, records, phase_of, config, tasks)
        if with_counts is not manifest and not options.dry_run:
            files.write_manifest(with_counts)  # from here on a resume numbers the partitions as this run does
        plan = sending_phases(with_counts.phase_partitions, set(sent_before), cores=executors.cores,
                              max_in_flight=config.mixpanel.max_in_flight, fixed_cores=executors.fixed)
        # Python workers for the first sending tasks, started on local Spark where cores would idle. The
        # check's query (the JVM's first to map the source) outlasts the count and the manifest: the other
        # cores start theirs now, and the check's core its own once the check is done. Each start is a job
        # of its own, on a thread of its own: it runs while the driver plans the sending job (about a
        # second), and that job's map side waits for them less than its first sending tasks would.
        if executors.fixed and plan:
            first_wave = min(plan[0].tasks, executors.cores)
            beside_check = 0 if check is None else min(first_wave, executors.cores - 1)
            start_python_workers_meanwhile(spark, beside_check)
            check_ended()
            start_python_workers_meanwhile(spark, first_wave - beside_check)
        return with_counts, plan

    # The check ends before anything is sent, so that wrong credentials cost one request.
    manifest, plan = while_checking(spark, check, count_and_plan)
    # A run stopped after its last partition was sent, but before its results were written, has only
    # those to finish.
    if options.resume and not plan and files.has_summary():
        raise ConfigError(f"--resume: run {manifest.run_id} has sent everything: there is nothing to resume")
    if sent_before:
        log.info("resuming run %s: %d of %d partitions were sent before and are not sent again",
                 options.run_id, len(sent_before), sum(manifest.phase_partitions))
    progress = Progress(total_rows=sum(manifest.phase_rows), partitions=sum(manifest.phase_partitions),
                        sent_before=len(sent_before), interval_s=config.job.progress_interval_s)
    profile = previewer.profile_column(records, config, sum(manifest.phase_rows)) if previewer else None
    sending = Sending(spark, files, endpoint, attempt, dry_run=options.dry_run, progress=progress, profile=profile)
    outcomes: list[PartitionOutcome] = []
    with progress.running():
        for phase in plan:
            settings = SenderSettings.for_tasks(config.mixpanel, phase.tasks, options.stream_run_id or options.run_id)
            if options.dry_run:  # nothing to pace without a server
                settings = dataclasses.replace(settings, pacing=False, max_events_per_second=None)
            log.info("sending %s, %d at a time, %s in flight each", counted(len(phase.to_send), "partition"),
                     phase.tasks, counted(settings.in_flight, "request"))
            in_phase = phase_records(records, phase_of, len(manifest.phase_rows), phase.number)
            outcomes += sending.send(phase, in_phase, settings)
            if any(o.status != OK for o in outcomes):
                break

    def show_preview() -> None:  # beside the results' writes: its parse and counts take the driver about 0.5 s
        previewer.show(records, config, sum(manifest.phase_rows), *passed_on_parts(sending.passed_on()))

    sent = {**sent_before, **{o.index: (attempt, o) for o in outcomes if o.status == OK}}
    failed = [o for o in outcomes if o.status != OK]
    summary = write_results(spark, files, manifest, sent, failed, options, resumed=len(sent_before),
                            imported_before=sum(o.tally.imported for _, o in sent_before.values()),
                            seconds=time.monotonic() - started,
                            meanwhile=show_preview if previewer else None)
    if failed:
        first = min(failed, key=lambda o: (o.status == UNSENT, o.index))  # the cause, not a partition it stopped
        raise RunStopped(first.status, first.message or "", summary)
    return summary


def count_phases(manifest: Manifest, source: DataFrame, records: DataFrame, phase_of: Column | None,
                 config: Config, tasks: int) -> Manifest:
    """The manifest with each phase's records counted, and so its number of partitions (for `tasks`
    sending at once). An empty phase gets no partition, and so no Spark job, but a run of no records
    keeps one, whose outcome records that the run is complete."""
    counts = [count_records(source, records, config)] if phase_of is None else \
        phase_counts(records, phase_of, config.job)
    partitions = [shuffle_partitions(count, config.job.records_per_partition, tasks) if count else 0
                  for count in counts]
    if not any(partitions):
        partitions[0] = 1
    return dataclasses.replace(manifest, phase_rows=counts, phase_partitions=partitions)


def resumable(manifest: Manifest, options: RunOptions) -> Manifest:
    if manifest.dry_run:
        raise ConfigError(f"--resume: run {options.run_id} was a dry run, which sent nothing; start a new run instead")
    return manifest


def write_results(spark: SparkSession, files: RunFiles, manifest: Manifest,
                  sent: dict[int, tuple[str, PartitionOutcome]], failed: list[PartitionOutcome], options: RunOptions,
                  *, resumed: int, imported_before: int, seconds: float,
                  meanwhile: Callable[[], None] | None = None) -> Summary:
    """partitions/, rejected/ and summary/ for the whole run (every attempt of it); `sent` maps each sent
    partition to the attempt that sent it and its outcome. `meanwhile` is the driver's own work (a dry
    run's preview), done while Spark writes."""
    known = {**{o.index: o for o in failed}, **{index: outcome for index, (_, outcome) in sent.items()}}
    summary = summarize(run_id=options.run_id, dry_run=options.dry_run, rows_read=rows_read(manifest, known),
                        partitions=sum(manifest.phase_partitions), outcomes=list(known.values()),
                        resumed=resumed, imported_before=imported_before, seconds=seconds, results_path=files.path)
    not_imported_in = {index: attempt for index, (attempt, outcome) in sent.items()
                       if outcome.tally.rejected or outcome.tally.invalid}
    rejected = [rejected_records(spark, files.outcomes, not_imported_in)] if not_imported_in else []
    writes = [functools.partial(files.write_partitions, list(known.values())),
              functools.partial(files.write_rejected, *rejected)]
    if options.dry_run:  # its manifest only tells a resume that there is nothing to resume: written at the end, warm
        writes.append(functools.partial(files.write_manifest, manifest))
    # Each small write is a Spark job that waits on the driver more than it computes: at once, they take
    # about the time of one. The summary goes last: a reader that finds it finds the results beside it whole.
    at_once(*writes, *([meanwhile] if meanwhile else []))
    files.write_summary(summary)
    if not summary.balanced:
        log.error("accounting mismatch: %d records read, but %d imported, %d rejected, %d invalid and %d unsent",
                  summary.rows_read, summary.imported, summary.rejected, summary.invalid, summary.unsent)
    return summary


def at_once(*steps: Callable[[], object]) -> None:
    """Run the steps on threads of their own and wait for every one; the first to fail raises."""
    with ThreadPoolExecutor(len(steps), thread_name_prefix="mp-spark-results") as pool:
        for done in [pool.submit(step) for step in steps]:
            done.result()


def rows_read(manifest: Manifest, known: dict[int, PartitionOutcome]) -> int:
    """The records of the run: a phase's partitions hold as many as its outcomes say (a partition
    without one is empty), and a phase no attempt has sent yet as many as were counted."""
    total, first = 0, 0
    for rows, partitions in zip(manifest.phase_rows, manifest.phase_partitions, strict=True):
        in_phase = [known[i] for i in range(first, first + partitions) if i in known]
        total += sum(o.size for o in in_phase) if in_phase else rows
        first += partitions
    return total


def while_checking(spark: SparkSession, check: Callable[[threading.Event], None] | None,
                   work: Callable[[Callable[[], None]], T]) -> T:
    """Do the work while the credentials are checked on another thread: wrong credentials should stop
    it at once, and a small source should not wait for both in turn. The work is given a function
    that waits for the check to end. A failed check interrupts the work, and its reason is raised;
    Ctrl-C during the work stops the check (which it is given an event for)."""
    if check is None:
        return work(lambda: None)
    tag = f"mp-spark-work-{secrets.token_hex(4)}"
    failed: list[BaseException] = []
    stopping = threading.Event()
    work_over = threading.Event()  # the work has ended, or waits for the check: it starts no more jobs

    def checking() -> None:
        try:
            check(stopping)
        except BaseException as exc:
            failed.append(exc)
            # Spark interrupts only the jobs running then: the one the work starts next is interrupted too.
            while not work_over.is_set():
                interrupt_jobs(spark, tag)
                work_over.wait(INTERRUPT_EVERY_S)

    def check_ended() -> None:
        work_over.set()
        checker.join()
        if failed:
            raise failed[0]

    # A daemon: after Ctrl-C the process does not wait for a check still in its Spark query.
    checker = threading.Thread(target=checking, name="mp-spark-credentials-check", daemon=True)
    checker.start()
    try:
        with jobs_tagged(spark, tag):  # the work's jobs, which a failed check interrupts
            done = work(check_ended)
        check_ended()
    except KeyboardInterrupt:
        stopping.set()  # a check backing off from Mixpanel would otherwise hold the process for minutes
        work_over.set()
        raise
    except Exception:
        work_over.set()
        checker.join()
        if failed:  # the reason the work was interrupted
            raise failed[0] from None
        raise
    return done


def check_credentials(endpoint: Endpoint, mixpanel: MixpanelConfig, records: DataFrame, recent: Column | None,
                      stop: threading.Event) -> None:
    """Send one record from the driver before any executor sends: wrong credentials cost one request,
    not one per task. Its `$insert_id` (or, for a profile update, its idempotence) makes sending it
    again with its partition harmless. With job.order recent_first it is a `recent` one where there
    is one, so that the recent days still go first. Setting `stop` ends its retries."""
    valid = records.filter(F.col("invalid").isNull()).select("line")
    first = (valid.filter(recent).limit(1).collect() if recent is not None else []) or valid.limit(1).collect()
    if not first:
        return
    transport = RequestsTransport()
    try:
        sender = BatchSender(endpoint, SenderSettings.for_tasks(mixpanel), transport, stop=stop)
        for _ in sender.send([Batch.of_lines([first[0].line.encode("utf-8")])]):
            pass  # a refused record is fine here: it is sent, and accounted for, with its partition
    except SendStopped as stopped:
        raise RunStopped(stopped.status, stopped.message) from None
    finally:
        transport.close()


class Sending:
    """Runs one Spark job per phase: the phase's records spread by key over its partitions, each tagged
    with its index, sent by at most `phase.tasks` tasks at once, to outcome rows written by Spark.

    Ctrl-C on the driver interrupts the job; its partitions then count as not sent.
    """

    def __init__(self, spark: SparkSession, files: RunFiles, endpoint: Endpoint, attempt: str, *, dry_run: bool,
                 progress: Progress, profile: Column | None = None) -> None:
        """`profile` (a dry run's preview's) is what the tasks pass on of each record for the profile."""
        self._spark = spark
        self._files = files
        self._endpoint = endpoint
        self._attempt = attempt
        self._profile = profile
        self._dry_run = dry_run
        self._progress = progress
        self._tag = f"mp-spark-{attempt}"
        self._passed_on: list[pa.Table] = []  # rows of each phase's tasks, a dry run's sample and profile among them

    def passed_on(self) -> pa.Table:
        """The rows the tasks of every phase returned (`record`, `index`, `event`, `profile`), a dry run's
        sample and profile rows among them (preview.passed_on_parts)."""
        return pa.concat_tables(self._passed_on)

    def send(self, phase: Phase, records: DataFrame, settings: SenderSettings) -> list[PartitionOutcome]:
        valid = F.col("invalid").isNull()
        # Only a dry run's tasks get the profile column, as text: a list column in their input, even null on
        # every row, cost a 1M-event run about 8 of its 30 s.
        profile = [] if self._profile is None else [self._profile.alias("profile")]
        spread = records.select("key", "line", "invalid", "trimmed", *profile).repartition(phase.partitions, "key")
        # spark_partition_id is not deterministic to Spark, which so keeps it where it is: above the shuffle.
        tagged = spread.withColumn("partition", F.spark_partition_id() + F.lit(phase.first))
        if len(phase.to_send) < phase.partitions:  # a resume: the partitions sent before are left out
            tagged = tagged.filter(F.col("partition").isin(list(phase.to_send)))
        stage_tasks = phase.tasks if phase.coalesced else phase.partitions
        if phase.coalesced:
            tagged = tagged.coalesce(phase.tasks)
        lines = tagged.select(
            "partition",
            F.when(valid, F.concat("line", F.lit("\n"))).alias("line"),
            F.when(valid & F.col("trimmed"), 1).otherwise(0).cast("byte").alias("trimmed"),
            F.col("invalid.field").alias("field"), F.col("invalid.message").alias("message"),
            F.when(~valid, F.col("key")).alias("insert_id"), F.when(~valid, F.col("line")).alias("event"),
            *(["profile"] if profile else []),
        )
        sender = partition_sender(self._endpoint, settings, self._attempt, dry_run=self._dry_run)
        try:
            with jobs_tagged(self._spark, self._tag), \
                    task_counter(self._spark, self._tag, stage_tasks) as tasks_done, \
                    self._progress.phase(len(phase.to_send), stage_tasks, tasks_done):
                # Hadoop's file committer, algorithm 2: a task's rows are in place once it commits, not when
                # the job does, so a resume after Ctrl-C or a lost driver skips the partitions of the tasks
                # that ended (every partition of a coalesced task is sent again if it did not).
                lines.mapInArrow(sender, SENT_SCHEMA).write.mode("append") \
                    .option("mapreduce.fileoutputcommitter.algorithm.version", "2") \
                    .parquet(self._files.phase_path(self._attempt, phase.number))
        except KeyboardInterrupt:  # Ctrl-C: stop the job rather than leave it running (a job that failed has ended)
            interrupt_jobs(self._spark, self._tag)
            raise
        outcomes, passed_on = self._files.read_phase(self._attempt, phase.number)
        self._passed_on.append(passed_on.select(["record", "index", "event", "profile"]))
        # A partition that no record went to gives its task no rows, so it returns none. The job committed
        # every task: such a partition is sent, with nothing in it (else a run would never be complete),
        # and recorded so, for a resume to skip.
        returned = {o.index for o in outcomes}
        empty = [PartitionOutcome(index, Tally()) for index in phase.to_send if index not in returned]
        if empty:
            self._files.add_outcomes(self._attempt, phase.number, empty)
        outcomes = sorted([*outcomes, *empty], key=lambda o: o.index)
        self._progress.sent(sum(o.status == OK for o in outcomes))
        for outcome in outcomes:
            if outcome.status not in (OK, UNSENT):
                log.error("partition %d: %s: %s", outcome.index, outcome.status, outcome.message)
        return outcomes
