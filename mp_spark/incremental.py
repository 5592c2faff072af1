"""job.mode incremental: keep Mixpanel in sync with a growing source, through Structured Streaming.

    source as a stream -> micro-batch -> run_job (exactly as a backfill of those rows) -> commit

Each micro-batch is counted, checked, sent and summed up by `run_job`, with its results under
`<results_path>/batches/stream=<stream id>/batch=<id>/` (the id Spark keeps in the checkpoint: a new
checkpoint numbers its micro-batches from 0 again, and must not replace another stream's results).
Spark commits a micro-batch to the checkpoint only when foreachBatch returns, so a batch whose sending
stopped, or a driver that died mid-batch, leaves it uncommitted: the next run sends the same rows
again, with the same `$insert_id`s, and Mixpanel keeps one of each. The whole run's summary
(`<results_path>/summary/`) adds up its micro-batches.

The function given to foreachBatch runs in the driver's Python on classic Spark and in the Connect
server's on Spark Connect: it reports through files under `results_path`, never through memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from pyspark.cloudpickle import register_pickle_by_value
from pyspark.errors import AnalysisException, StreamingQueryException
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from mp_spark import batch_function
from mp_spark.batch_function import for_each_batch
from mp_spark.config import STREAM_JOB_KEYS, STREAM_SOURCE_KEYS, Config, ConfigError, Credentials, with_defaults
from mp_spark.results import RunFiles, Summary, add_up, read_text, write_text
from mp_spark.run import RunOptions, RunStopped, run_job
from mp_spark.session import check_executors, is_connect, package_zip
from mp_spark.sources import CHANGE_FEED_COLUMNS, column_named, open_stream, unhashable

log = logging.getLogger(__name__)
register_pickle_by_value(batch_function)  # it runs where mp_spark may not be importable yet
CONFIG_PROBLEM = "config"  # a stopped batch's status when a ConfigError stopped it (else a RunStopped status)


def checkpoint_path(config: Config, results_root: str) -> str:
    """job.checkpoint_path, or `<results_root>/checkpoints/<kind>-<digest>`: the same for every run of
    a config whose source, kind and Mixpanel project (host and project_id) stay the same. A changed
    mapping keeps the stream's place; a changed source starts a new stream, and so does another
    project (a test project first, as Mixpanel advises, must not leave the real one "nothing new")."""
    if config.job.checkpoint_path:
        return config.job.checkpoint_path
    # How the rows are read (the files' schema given, change commits passed over) is not where the
    # stream is: a run told so goes on from its place.
    source = json.dumps({**dataclasses.asdict(config.source), "schema": None, "skip_change_commits": False},
                        sort_keys=True)
    target = f"{config.mixpanel.base_url} {config.mixpanel.project_id}"
    digest = hashlib.sha256(f"{config.job.kind}\n{source}\n{target}".encode()).hexdigest()[:12]
    return f"{results_root.rstrip('/')}/checkpoints/{config.job.kind}-{digest}"


def as_backfill(config: Config) -> Config:
    """An incremental config as a backfill of its whole source: what a dry run of it previews."""
    return dataclasses.replace(config, source=with_defaults(config.source, STREAM_SOURCE_KEYS),
                               job=with_defaults(config.job, ("mode", *STREAM_JOB_KEYS)))


def changed_rows(batch: DataFrame, config: Config) -> DataFrame:
    """A change-feed micro-batch as source rows: inserted rows for events; for profiles, each
    profile's latest post-image (an insert, or an update's new row). Deletes are not sent."""
    if not config.source.change_feed:
        return batch
    if not config.profiles:
        return batch.filter(F.col("_change_type") == "insert").drop(*CHANGE_FEED_COLUMNS)
    key = F.expr(config.mapping.distinct_id if config.job.kind == "people" else config.mapping.group_id)
    # Two post-images of one key in one commit (a table with repeated keys) are told apart by their
    # content, so that a micro-batch run again picks the same one. Spark hashes no map or VARIANT: those
    # columns go in as JSON, the others as they are (no JSON of every row).
    content = F.xxhash64(*[F.to_json(column_named(f.name)) if unhashable(f.dataType) else column_named(f.name)
                           for f in batch.schema.fields])
    latest_first = Window.partitionBy(key).orderBy(F.col("_commit_version").desc(), content)
    return (batch.filter(F.col("_change_type").isin("insert", "update_postimage"))
            .withColumn("_mp_spark_latest", F.row_number().over(latest_first))
            # Rows without a key are no one profile's: each goes on, to be set aside as invalid, not merged into one.
            .filter((F.col("_mp_spark_latest") == 1) | key.isNull())
            .drop("_mp_spark_latest", *CHANGE_FEED_COLUMNS))


class MicroBatches:
    """What the foreachBatch function does (`batch_function`): send one micro-batch as a backfill,
    under the run's results path.

    A batch that stops (a config or credential problem, retries exhausted) records why in
    `stops/run=<run id>/` and raises, so that Spark stops the stream without committing it.
    """

    def __init__(self, config: Config, credentials: Credentials | None, results_path: str, run_id: str,
                 stream: str) -> None:
        self.config = config
        self.credentials = credentials
        self.results_path = results_path.rstrip("/")
        self.run_id = run_id
        self.stream = stream

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        path = batch_path(stream_batches(self.results_path, self.stream), batch_id)
        options = RunOptions(run_id=batch_run_id(self.run_id, batch_id), results_path=path, stream_run_id=self.run_id)
        try:  # the driver logs the batch's counts once the query reports it done (record_progress)
            run_job(spark, self.config, self.credentials, options, rows=changed_rows(batch, self.config))
        except RunStopped as stopped:
            record_stop(spark, self.results_path, self.run_id, batch_id, stopped.status, stopped.message)
            raise
        except ConfigError as exc:
            record_stop(spark, self.results_path, self.run_id, batch_id, CONFIG_PROBLEM, str(exc))
            raise


def stream_id(spark: SparkSession, checkpoint: str) -> str:
    """The id Spark gives a stream when it starts it on a new checkpoint, and keeps in the checkpoint's
    metadata file (the query's `id`): the same for every run that goes on from that checkpoint."""
    return json.loads(read_text(spark, f"{checkpoint}/metadata"))["id"]


def stream_batches(results_path: str, stream: str) -> str:
    """Where a stream's micro-batches keep their results."""
    return f"{results_path}/batches/stream={stream}"


def batch_path(batches: str, batch_id: int) -> str:
    return f"{batches}/batch={batch_id}"


def batch_run_id(run_id: str, batch_id: int) -> str:
    return f"{run_id}-batch{batch_id}"


def stop_path(results_path: str, run_id: str) -> str:
    return f"{results_path}/stops/run={run_id}"


def record_stop(spark: SparkSession, results_path: str, run_id: str, batch_id: int, status: str, message: str
                ) -> None:
    write_text(spark, stop_path(results_path, run_id),
               json.dumps({"batch_id": batch_id, "status": status, "message": message}))


@dataclass(frozen=True)
class StreamSummary:
    total: Summary  # the micro-batches' summaries added up
    micro_batches: list[dict]  # per micro-batch: its id, counts, and the source offsets it read
    checkpoint_path: str
    nothing_new_since: str | None = None  # a run that found nothing new: when the stream last read
    stream_id: str | None = None  # its micro-batches' results are under batches/stream=<this>/

    def as_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self.total), "mode": "incremental",
                           "micro_batches": self.micro_batches, "checkpoint_path": self.checkpoint_path,
                           "stream_id": self.stream_id, "nothing_new_since": self.nothing_new_since})


def run_stream(spark: SparkSession, config: Config, credentials: Credentials | None, *, run_id: str,
               results_path: str, checkpoint: str, stop: threading.Event) -> StreamSummary:
    """Send what is new in the source, micro-batch by micro-batch: everything, then stop (job.trigger
    available_now), or until `stop` is set (continuous; the running micro-batch is finished first).

    Raises RunStopped or ConfigError as a backfill does, from the micro-batch that stopped.
    """
    started = time.monotonic()
    results_path = results_path.rstrip("/")
    stream = open_stream(spark, config.source, config.job)
    check_executors(spark)  # once for every micro-batch; on Spark Connect, ships mp_spark to the executors
    send_batch = for_each_batch(package_zip() if is_connect(spark) else None, json.dumps(dataclasses.asdict(config)),
                                (credentials.kind, credentials.username, credentials.password) if credentials else None,
                                results_path, run_id, checkpoint)
    writer = (stream.writeStream.queryName(f"mp-spark-{run_id}").foreachBatch(send_batch)
              .option("checkpointLocation", checkpoint))
    if config.job.trigger == "available_now":
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{config.job.trigger_interval_s} seconds")
    log.info("incremental run %s: checkpoint %s", run_id, checkpoint)
    query = writer.start()
    batches_path = stream_batches(results_path, str(query.id))
    done: dict[int, tuple[Summary, dict]] = {}
    done_when_stopped: int | None = None  # micro-batches done when the stop was first seen
    try:
        while query.isActive:
            if stop.is_set() and done_when_stopped is None:
                done_when_stopped = len(done)
                log.info("stopping: after the micro-batch that is running, if one is")
            # With a backlog one micro-batch follows another at once, with no idle moment to stop in:
            # the stop comes as soon as the running one is done, when the next has only begun to read.
            if done_when_stopped is not None and (not query.status["isTriggerActive"] or len(done) > done_when_stopped):
                query.stop()
                break
            try:
                query.awaitTermination(1 if done_when_stopped is None else 0.1)
            except StreamingQueryException:
                break
            record_progress(spark, query, batches_path, run_id, done)
    except BaseException:  # Ctrl-C on the driver: the running micro-batch stays uncommitted
        query.stop()
        raise
    record_progress(spark, query, batches_path, run_id, done)
    failure = query.exception()
    recorded_stop = read_stop(spark, results_path, run_id) if failure is not None else None
    summaries = [summary for summary, _ in done.values()]
    stopped_batch = batch_summary(spark, batches_path, run_id, recorded_stop["batch_id"]) if recorded_stop else None
    total = add_up(run_id, summaries + ([stopped_batch] if stopped_batch else []),
                   seconds=time.monotonic() - started, results_path=results_path)
    nothing_new = not (done or failure or stop.is_set())  # a stop before the first batch is not "nothing new"
    batches = [done[batch_id][1] for batch_id in sorted(done)]
    if stopped_batch:  # counted in the total, so listed too: the list adds up to it
        batches.append({"batch_id": recorded_stop["batch_id"], "stopped": recorded_stop["status"],
                        **{name: getattr(stopped_batch, name) for name in (*BATCH_COUNTS, "unsent")}})
    summary = StreamSummary(total, batches, checkpoint, last_read(spark, checkpoint) if nothing_new else None,
                            str(query.id))
    write_text(spark, f"{results_path}/summary", summary.as_json())
    if failure is not None:
        raise stop_error(recorded_stop, total if summaries or stopped_batch else None) if recorded_stop else \
            changed_rows_error(failure) or failure
    return summary


def changed_rows_error(failure: Exception) -> ConfigError | None:
    """Delta's stream of a table's rows stops at a commit that changed or deleted rows (a DELETE,
    UPDATE or MERGE, a GDPR erasure): what the user can set to go on, as a config error."""
    if not any(condition in str(failure) for condition in ("DELTA_SOURCE_TABLE_IGNORE_CHANGES",
                                                           "DELTA_SOURCE_IGNORE_DELETE")):
        return None
    return ConfigError("source: a commit changed or deleted rows of the Delta table (DELETE, UPDATE or MERGE), "
                       "which a stream of its rows cannot follow: set source.skip_change_commits: true to send "
                       "only the rows added from then on (rows changed in place are not sent again), or read "
                       "its change feed with source.change_feed: true")


def record_progress(spark: SparkSession, query, batches_path: str, run_id: str,
                    done: dict[int, tuple[Summary, dict]]) -> None:
    """Log each micro-batch the query has finished since the last call, and keep its summary and the
    source offsets it read (from the query's progress)."""
    for report in query.recentProgress:
        batch_id = report["batchId"]
        # An idle report (no micro-batch ran) carries the next batch's id, which has nothing to read yet.
        if batch_id in done or "addBatch" not in report["durationMs"]:
            continue
        summary = batch_summary(spark, batches_path, run_id, batch_id)
        if summary is None:  # the batch failed: its stop is reported once the query has ended
            continue
        sources = [{"description": s["description"], "start": offset(s["startOffset"]), "end": offset(s["endOffset"])}
                   for s in report["sources"]]
        done[batch_id] = (summary, {"batch_id": batch_id, **{name: getattr(summary, name) for name in BATCH_COUNTS},
                                    "sources": sources})
        log.info("micro-batch %d: %s, in %.1f s", batch_id,
                 ", ".join(f"{getattr(summary, name):,} {name.replace('_', ' ')}" for name in BATCH_COUNTS),
                 report["durationMs"].get("triggerExecution", 0) / 1000)


BATCH_COUNTS = ("rows_read", "imported", "rejected", "invalid")


def offset(reported: object) -> object:
    """A source offset as the progress report gives it (JSON text for Delta and files), as data, so
    that the summary holds `{"reservoirVersion": 2, ...}` rather than a string of JSON."""
    if not isinstance(reported, str):
        return reported
    try:
        return json.loads(reported)
    except ValueError:
        return reported


def batch_summary(spark: SparkSession, batches_path: str, run_id: str, batch_id: int) -> Summary | None:
    """The summary this run wrote for a micro-batch; None when the batch stopped before it had one (a
    summary there may be an earlier run's, of a batch with the same number)."""
    return RunFiles(spark, batch_path(batches_path, batch_id), batch_run_id(run_id, batch_id)).read_summary()


def read_stop(spark: SparkSession, results_path: str, run_id: str) -> dict | None:
    """What `record_stop` recorded for this run, if a micro-batch of it stopped."""
    try:
        return json.loads(read_text(spark, stop_path(results_path, run_id)))
    except OSError:
        return None


def stop_error(stop: dict, total: Summary | None) -> Exception:
    """A micro-batch's stop as the error a backfill would raise (with the run's totals, if it sent any)."""
    if stop["status"] == CONFIG_PROBLEM:
        return ConfigError(stop["message"])
    return RunStopped(stop["status"], stop["message"], total)


def last_read(spark: SparkSession, checkpoint: str) -> str:
    """When the stream last read the source (its latest micro-batch's time), as ISO 8601 UTC; "never"
    for a stream that has read nothing yet. From the checkpoint's offset log, whose entries' first
    JSON line holds the batch's timestamp."""
    try:
        offsets = spark.read.text(f"{checkpoint}/offsets")
        latest = offsets.select(F.max(F.get_json_object("value", "$.batchTimestampMs").cast("long"))).first()[0]
    except AnalysisException:
        return "never"
    if latest is None:
        return "never"
    return datetime.fromtimestamp(latest / 1000, timezone.utc).isoformat(timespec="seconds")
