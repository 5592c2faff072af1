"""Command line: `mp-spark-backfill`, `python jobs/backfill.py` and `spark-submit jobs/backfill.py`.

Its credentials and exit codes are in HELP_EPILOG, which `--help` prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from mp_spark import LOG_FORMAT, counted
from mp_spark.config import (
    Config,
    ConfigError,
    Credentials,
    absolute_local,
    credentials_from_env,
    parse_config,
    with_absolute_paths,
)
from mp_spark.incremental import StreamSummary, as_backfill, checkpoint_path, run_stream
from mp_spark.presets import render_mapping
from mp_spark.preview import Previewer, preview_lookup_table
from mp_spark.results import RunFiles, Summary, default_results_path, default_results_root, read_text
from mp_spark.run import RunOptions, RunStopped, new_run_id, run_job
from mp_spark.session import Py4JNetworkError, get_spark, is_connect
from mp_spark.tally import EXHAUSTED

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

EXIT_OK, EXIT_NOT_ALL_IMPORTED, EXIT_CONFIG, EXIT_SEND_FAILED, EXIT_UNEXPECTED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by Ctrl-C
log = logging.getLogger("mp_spark")


HELP_EPILOG = """\
credentials, from the environment (never from the config):
  MP_SERVICE_ACCOUNT_USER and MP_SERVICE_ACCOUNT_SECRET (with mixpanel.project_id), or MP_PROJECT_TOKEN
  (job.kind people and groups take only the token; lookup tables only a service account)

exit codes:
  0    every row imported
  1    some rows rejected by Mixpanel or set aside as invalid (the results say which and why)
  2    a config, credential or environment problem
  3    sending failed after every retry (Mixpanel kept answering 429/5xx, or the network kept failing)
  4    anything unexpected: a Spark failure, an unreadable source, a bug
  130  interrupted (Ctrl-C)
  After a stop, the job prints what finishes the run (--resume, or running it again).
"""


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: `--conf KEY=VALUE` (spark-submit's spelling) would otherwise be read as --config.
    parser = argparse.ArgumentParser(
        prog="mp-spark-backfill", allow_abbrev=False, epilog=HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send events, profile updates or a lookup table from Parquet, Delta or JSON to Mixpanel,\n"
                    "with Spark: local Spark, the cluster of spark-submit, or a Spark Connect server.")
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--config", help="YAML or JSON config file: a local path or any URL Spark reads "
                                        "(s3://, dbfs:/, abfss://, gs://, /Volumes/...)")
    start.add_argument("--resume", metavar="RUN_ID_OR_RESULTS_PATH",
                       help="finish an interrupted run with the config it started with: send only the "
                            "partitions it has not sent (a bare run id is looked up under ./mp_spark_runs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set job.records_per_partition=50000")
    parser.add_argument("--dry-run", action="store_true",
                        help="show sample events and a property profile; validate, serialize, batch and gzip "
                             "everything, but send nothing")
    parser.add_argument("--remote", metavar="sc://HOST:PORT",
                        help="run on a Spark Connect server (default: SPARK_REMOTE, else the running session, "
                             "else local Spark)")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "WARN", "ERROR"],
                        help="how much the job logs (default INFO: progress lines and a summary)")
    return parser


# What --set may change on --resume: the source, mapping and partitioning are the run's own.
RESUMABLE_SETTINGS = ("mixpanel.", "job.progress_interval_s=")


def lost_spark(exc: BaseException) -> bool:
    """The job's Spark is gone: the driver's JVM (killed, or out of memory), or a Spark Connect server
    that stayed unreachable through the client's retries."""
    if isinstance(exc, (ConnectionError, Py4JNetworkError)):
        return True
    status = getattr(exc, "getGrpcStatusCode", None)  # SparkConnectGrpcException, whose import needs grpc
    return status is not None and getattr(status(), "name", "") == "UNAVAILABLE"


CONNECT_TOKEN = re.compile(r"(;token=)[^;'\"\s]+")  # sc://host:port/;token=... (Databricks' personal access token)


def not_py4j_on_root(record: logging.LogRecord) -> bool:
    """False for what py4j logs on the root logger: a call to the JVM that failed or that Ctrl-C cut
    short, with its traceback. The call raises as well, and the job says once, in its own words, what
    stopped it."""
    return not (record.name == "root" and f"{os.sep}py4j{os.sep}" in record.pathname)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume and args.dry_run:
        return config_error(ConfigError("--resume and --dry-run together would record partitions as sent "
                                        "without sending them; resume without --dry-run"))
    reshaping = [s for s in args.set if not s.startswith(RESUMABLE_SETTINGS)]
    if args.resume and reshaping:
        return config_error(ConfigError(f"--resume: --set {reshaping[0]} would change which rows the run's "
                                        "partitions hold; only mixpanel.* and job.progress_interval_s may change"))
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    # py4j's INFO lines are about its own sockets. Its errors (such as a micro-batch's traceback, when a
    # stop interrupts it) come back as the call's or the stream's failure, which the job reports in its
    # own words: they are shown only with --log-level DEBUG.
    logging.getLogger("py4j").setLevel(logging.WARNING if args.log_level == "DEBUG" else logging.CRITICAL)
    # Spark Connect's client warns as it gives up on a server; the job says what failed, in its own words.
    warnings.filterwarnings("ignore", message=r"\[RETRIES_EXCEEDED\]")
    for handler in logging.getLogger().handlers:
        handler.addFilter(not_py4j_on_root)
    config = credentials = None
    try:
        if read_here(args.config, remote=bool(args.remote or os.environ.get("SPARK_REMOTE"))):
            with open(args.config, encoding="utf-8") as handle:  # checked before a JVM starts: fail fast
                config = parse_config(handle.read(), args.set)
            credentials = credentials_for(config, args.dry_run)
    except (OSError, ConfigError) as exc:
        return config_error(exc)

    spark = results_path = None
    incremental = False

    def next_step() -> str:  # reads results_path, incremental and config when called: as far as the run got
        # A dry run sent nothing, and a lookup table goes whole in one request: --resume finishes neither.
        lookup_table = config is not None and config.job.kind == "lookup_table"
        return what_next(results_path, incremental, resumable=not (args.dry_run or lookup_table))

    try:
        spark = get_spark(args.remote, config)  # None: the config is remote, or in the run being resumed
        if args.resume:
            results_path = args.resume if ("/" in args.resume or ":" in args.resume) else \
                default_results_path(args.resume)
            if is_connect(spark):  # the server would resolve a relative path from its own working directory
                results_path = absolute_local(results_path)
            manifest = RunFiles(spark, results_path).read_manifest()
            config = parse_config(json.dumps(manifest.config), args.set)
            if config.incremental:
                raise ConfigError("--resume is for backfills: run an incremental job again instead, and it "
                                  "starts from the micro-batch it has not finished")
            options = RunOptions(run_id=manifest.run_id, results_path=results_path, resume=True)
        else:
            if config is None:  # a relative path is this process's, not the Connect server's working directory's
                config = parse_config(read_text(spark, absolute_local(args.config) if is_connect(spark)
                                                else args.config), args.set)
            if is_connect(spark):  # the server would resolve relative paths from its own working directory
                config = with_absolute_paths(config)
            if config.incremental and args.dry_run:
                print("mp-spark: a dry run of an incremental job previews its whole source, as a backfill; "
                      "the stream's checkpoint is neither read nor changed")
                config = as_backfill(config)
            run_id = new_run_id()
            results_path = config.job.results_path or default_results_path(run_id)
            options = RunOptions(run_id=run_id, results_path=results_path, dry_run=args.dry_run)
        credentials = credentials or credentials_for(config, args.dry_run)
        if config.incremental:
            incremental = True
            stream = run_incremental(spark, config, credentials, options)
            report, summary = format_stream_summary(stream, records_noun(config)), stream.total
        else:
            previewer = None
            if args.dry_run:
                print(render_mapping(config.mapping), end="")
            if args.dry_run and config.job.kind == "lookup_table":
                print(preview_lookup_table(spark, config).render())
            elif args.dry_run:
                previewer = Previewer(lambda preview: print(preview.render(records_noun(config)), flush=True))
            summary = run_job(spark, config, credentials, options, previewer)
            report = format_summary(summary, noun=records_noun(config))
    except (OSError, ConfigError) as exc:
        if lost_spark(exc):  # a ConnectionError is an OSError too, but not the config's fault
            return unexpected_failure(exc, spark, results_path, credentials, next_step())
        return config_error(exc)
    except RunStopped as stopped:  # with no summary it stopped before sending (the credential check): nothing to finish
        return run_stopped(stopped, next_step() if stopped.summary is not None else "run the job again",
                           records_noun(config))
    except KeyboardInterrupt:
        print(f"mp-spark: interrupted; {next_step()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        return unexpected_failure(exc, spark, results_path, credentials, next_step())
    print(report)
    all_imported = summary.balanced and summary.rejected == 0 and summary.invalid == 0
    return EXIT_OK if all_imported else EXIT_NOT_ALL_IMPORTED


def read_here(config_path: str | None, *, remote: bool) -> bool:
    """Whether the config is a file this process reads itself, before Spark starts. A path Spark
    reads (a URL), or one that is not here but may be where a Spark Connect server runs (a Databricks
    Connect client's /Volumes/...), is read through Spark."""
    if not config_path or urlparse(config_path).scheme:
        return False
    return not remote or os.path.exists(config_path)


def what_next(results_path: str | None, incremental: bool, resumable: bool) -> str:
    """What to do once the cause of a stop is fixed."""
    if incremental:
        return ("run the job again: it starts from the micro-batch it has not finished (what that batch "
                "sent is sent again, and Mixpanel keeps one of each)")
    if results_path is None or not resumable:
        return "run the job again"
    return f"finish the run with --resume {results_path} (partitions that were sent are not sent again)"


def run_incremental(spark: SparkSession, config: Config, credentials: Credentials | None, options: RunOptions
                    ) -> StreamSummary:
    """job.mode incremental; SIGTERM (a scheduler stopping the job) stops it between micro-batches."""
    stop = threading.Event()
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    except ValueError:  # not the main thread: whoever runs us handles signals
        previous = None
    root = config.job.results_path or default_results_root()
    try:
        return run_stream(spark, config, credentials, run_id=options.run_id, results_path=options.results_path,
                          checkpoint=checkpoint_path(config, root), stop=stop)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run() -> None:
    """The console script (and Databricks' wheel task): the exit code must reach the caller, so raise it."""
    raise SystemExit(main())


def credentials_for(config: Config, dry_run: bool) -> Credentials | None:
    """The environment's credentials for the job's kind; a dry run needs none."""
    if dry_run:
        return None
    credentials = credentials_from_env(os.environ, config.mixpanel, config.job.kind)
    url = urlparse(config.mixpanel.base_url)
    if url.scheme == "http" and url.hostname not in ("127.0.0.1", "localhost", "::1"):
        log.warning("mixpanel.api_host is plain http, to %s: the credentials and the events cross the network "
                    "unencrypted (Mixpanel's hosts take https:// only)", url.hostname)
    return credentials


def config_error(exc: Exception) -> int:
    print(f"mp-spark: config error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def run_stopped(stopped: RunStopped, next_step: str, noun: str = "events") -> int:
    if stopped.summary is not None:
        print(format_summary(stopped.summary, noun=noun))
    if stopped.status == EXHAUSTED:
        print(f"mp-spark: sending failed after every retry ({stopped.message}); when Mixpanel or the network "
              f"is back, {next_step}", file=sys.stderr)
        return EXIT_SEND_FAILED
    print(f"mp-spark: stopped: {stopped.message}\nmp-spark: fix the cause, then {next_step}", file=sys.stderr)
    return EXIT_CONFIG


def unexpected_failure(exc: Exception, spark: SparkSession | None, results_path: str | None,
                       credentials: Credentials | None, next_step: str) -> int:
    """Exit 4: one short paragraph for the reader; the whole traceback in the log and in error/."""
    text = redacted("".join(traceback.format_exception(exc)), credentials)
    log.error("unexpected failure:\n%s", text)
    lost = lost_spark(exc)
    server_lost = lost and spark is not None and is_connect(spark)
    if server_lost:
        from mp_spark import connect_client  # needs grpc, which only a Connect client has

        connect_client.close(spark)
    kept = ""
    if spark is not None and results_path and not lost:  # else there is no Spark to write it
        try:
            RunFiles(spark, results_path).write_error(text)
            kept = f" and in {results_path}/error/"
        except Exception:  # Spark itself may be what failed: the log still has it
            pass
    if server_lost:  # gRPC's first line says nothing: "<_MultiThreadedRendezvous of RPC that terminated with:"
        what = (f"{type(exc).__name__}\nmp-spark: the job lost its Spark Connect server: "
                f"{connect_client.unreachable_reason(str(exc)) or 'it stopped answering'}")
    else:
        first_line = redacted(str(exc).strip().splitlines()[0] if str(exc).strip() else "", credentials)
        cause = ("the job lost Spark: the driver's JVM stopped (was it killed, or out of memory?), or the "
                 "Spark Connect server could not be reached" if lost else
                 "this is not a problem the job recognises (a Spark failure, an unreadable source, or a bug)")
        what = f"{type(exc).__name__}: {first_line[:300]}\nmp-spark: {cause}"
    print(f"mp-spark: unexpected failure: {what}; the whole traceback is in the log above{kept}. "
          f"Fix the cause, then {next_step}", file=sys.stderr)
    return EXIT_UNEXPECTED


def redacted(text: str, credentials: Credentials | None) -> str:
    """`text` without the credentials, whatever quoted them (a secret too short to be one is left alone:
    replacing every "x" would garble the text and protect nothing), nor a Spark Connect URL's token."""
    text = CONNECT_TOKEN.sub(r"\1***", text)
    if credentials is None:
        return text
    for secret in (credentials.password, credentials.username if credentials.kind == "project_token" else "",
                   credentials.authorization_header()):
        if len(secret) >= 8:
            text = text.replace(secret, "***")
    return text


def format_stream_summary(stream: StreamSummary, noun: str = "events") -> str:
    if stream.nothing_new_since is not None:
        return (f"mp-spark run {stream.total.run_id}: nothing new since {stream.nothing_new_since} "
                f"(checkpoint {stream.checkpoint_path})")
    if not stream.micro_batches and stream.total.rows_read == 0:
        return (f"mp-spark run {stream.total.run_id}: stopped before any micro-batch "
                f"(checkpoint {stream.checkpoint_path})")
    return "\n".join([format_summary(stream.total, incremental=True, noun=noun),
                      f"  {counted(len(stream.micro_batches), 'micro-batch')}; checkpoint {stream.checkpoint_path}"])


def records_noun(config: Config | None) -> str:
    """What a run's records are, in its printed lines."""
    kind = config.job.kind if config is not None else "events"
    return {"people": "updates", "groups": "updates", "lookup_table": "rows"}.get(kind, "events")


def format_summary(s: Summary, incremental: bool = False, noun: str = "events") -> str:
    """The summary a run prints; an incremental run's not-sent rows go with the next run, and its
    rejected rows are kept per micro-batch. Profile updates go to Mixpanel as plain JSON, not gzip."""
    sent = f"{s.gzip_bytes / 1e6:,.1f} MB gzip, " if noun != "updates" else ""
    imported_label = "would import" if s.dry_run else "imported"
    lines = [
        f"mp-spark run {s.run_id}" + ("  (dry run: nothing was sent)" if s.dry_run else ""),
        f"  {'rows read':<13}{s.rows_read:>14,}",
        f"  {imported_label:<13}{s.imported:>14,}",
        f"  {'rejected':<13}{s.rejected:>14,}   refused by Mixpanel",
        f"  {'invalid':<13}{s.invalid:>14,}   set aside before sending",
        *([f"  {'unsent':<13}{s.unsent:>14,}   not sent yet: "
           + ("the next run sends them" if incremental else "finish with --resume")] if s.unsent else []),
        *([f"  {'trimmed':<13}{s.trimmed:>14,}   sent with a value cut to fit Mixpanel's limits"]
          if s.trimmed else []),
        *([f"  {s.resumed_partitions} of {s.partitions} partitions were sent before this resumed run"]
          if s.resumed_partitions else []),
        f"  {counted(s.partitions, 'partition')}, {counted(s.batches, 'batch')}, {counted(s.requests, 'request')}, "
        f"{counted(s.retries, 'retry')}",
        f"  {s.raw_bytes / 1e6:,.1f} MB of JSON, {sent}{s.seconds:,.1f} s, {s.events_per_second:,.0f} {noun}/s",
        f"  results: {s.results_path}",
    ]
    if s.rejected or s.invalid:
        rejected = f"{s.results_path}/batches/*/*/rejected/" if incremental else f"{s.results_path}/rejected/"
        lines.append(f"  reasons for every row not imported: {rejected}")
    if not s.balanced:
        lines.append("  ACCOUNTING MISMATCH: rows read != imported + rejected + invalid + unsent (see the log)")
    return "\n".join(lines)
