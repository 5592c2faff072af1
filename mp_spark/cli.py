"""Command line: `mp-spark-backfill`, `python jobs/backfill.py` and `spark-submit jobs/backfill.py`.

Exit codes: 0 every row imported; 1 some rows rejected or invalid (see the results); 2 a config
or credential problem, found before or during sending; 3 sending failed after every retry (Mixpanel
kept answering 429/5xx, or the network kept failing). After 2 or 3, `--resume` finishes the run
without resending the partitions that finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

from pyspark.sql import SparkSession

from mp_spark.backfill import (
    BackfillAbortedError,
    BackfillFailedError,
    RunOptions,
    preview_backfill,
    run_backfill,
)
from mp_spark.config import (
    Config,
    ConfigError,
    Credentials,
    credentials_from_env,
    credentials_from_secret_scope,
    parse_config,
)
from mp_spark.ledger import Ledger
from mp_spark.presets import render_mapping
from mp_spark.results import Summary, default_results_path
from mp_spark.storage import is_local, read_text

EXIT_OK, EXIT_SOME_NOT_IMPORTED, EXIT_CONFIG, EXIT_SEND_FAILED = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mp-spark-backfill", description=__doc__.splitlines()[0])
    start = parser.add_mutually_exclusive_group(required=True)
    start.add_argument("--config", help="YAML or JSON config file: a local path or any URL Spark reads "
                                        "(s3://, dbfs:/, abfss://, gs://)")
    start.add_argument("--resume", metavar="RUN_ID_OR_RESULTS_PATH",
                       help="finish an interrupted run with the config it started with: send only the "
                            "partitions its results do not record as finished (a bare run id is looked "
                            "up under ./mp_spark_runs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set job.records_per_partition=50000")
    parser.add_argument("--dry-run", action="store_true",
                        help="show sample events and a property profile; validate, serialize, batch and gzip "
                             "everything, but send nothing")
    parser.add_argument("--log-level", default="INFO")
    return parser


# What --set may change on --resume: the source, mapping and partitioning are the run's own.
RESUMABLE_SETTINGS = ("mixpanel.", "job.progress_interval_s=")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.resume and args.dry_run:
        return config_error(ConfigError("--resume and --dry-run together would record partitions as finished "
                                        "without sending them; resume without --dry-run"))
    reshaping = [s for s in args.set if not s.startswith(RESUMABLE_SETTINGS)]
    if args.resume and reshaping:
        return config_error(ConfigError(f"--resume: --set {reshaping[0]} would change which rows the run's "
                                        "partitions hold; only mixpanel.* and job.progress_interval_s may change"))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines are about its own sockets
    config = None
    try:
        if args.config and is_local(args.config):  # checked before a JVM starts: a bad config fails fast
            with open(args.config, encoding="utf-8") as handle:
                config = parse_config(handle.read(), args.set)
            credentials_from(config, None, args.dry_run)
    except (OSError, ConfigError) as exc:
        return config_error(exc)

    from mp_spark.session import get_spark

    # Without the config yet (it is remote, or in the run being resumed), Delta may be needed.
    spark = get_spark(with_delta=config is None or config.source.format == "delta")
    try:
        if args.resume:
            results_path = args.resume if ("/" in args.resume or ":" in args.resume) else default_results_path(
                args.resume)
            manifest = Ledger(spark, results_path).read_manifest()
            config = parse_config(json.dumps(manifest.config), args.set)
            options = RunOptions(run_id=manifest.run_id, results_path=results_path, dry_run=args.dry_run, resume=True)
        else:
            if config is None:
                config = parse_config(read_text(spark, args.config), args.set)
            run_id = new_run_id()
            options = RunOptions(run_id=run_id, results_path=config.job.results_path or default_results_path(run_id),
                                 dry_run=args.dry_run)
        credentials = credentials_from(config, spark, args.dry_run)
        if args.dry_run:
            print(render_mapping(config.mapping) + preview_backfill(spark, config).render())
        summary = run_backfill(spark, config, credentials, options)
    except (OSError, ConfigError) as exc:
        return config_error(exc)
    except BackfillAbortedError as exc:
        print(f"mp-spark: stopped: {exc}", file=sys.stderr)
        print(f"mp-spark: fix the cause, then finish the run with --resume {options.results_path}", file=sys.stderr)
        return EXIT_CONFIG
    except BackfillFailedError as exc:
        print(f"mp-spark: sending failed after every retry ({exc}); finish the run with --resume "
              f"{options.results_path} (partitions that finished are not sent again)", file=sys.stderr)
        return EXIT_SEND_FAILED
    print(format_summary(summary))
    all_imported = summary.balanced and summary.rejected == 0 and summary.invalid == 0
    return EXIT_OK if all_imported else EXIT_SOME_NOT_IMPORTED


def run() -> None:
    """The console script (and Databricks' wheel task): the exit code must reach the caller, so raise it."""
    raise SystemExit(main())


def config_error(exc: Exception) -> int:
    print(f"mp-spark: config error: {exc}", file=sys.stderr)
    return EXIT_CONFIG


def credentials_from(config: Config, spark: SparkSession | None, dry_run: bool) -> Credentials | None:
    """The environment's credentials, or the Databricks secret scope's (read once Spark is up)."""
    if dry_run:
        return None
    if config.mixpanel.secret_scope is None:
        return credentials_from_env(os.environ, config.mixpanel, config.job.kind)
    if spark is None:
        return None  # checked once Spark is up
    return credentials_from_secret_scope(databricks_secret_getter(spark), config.mixpanel, config.job.kind)


def databricks_secret_getter(spark: SparkSession) -> Callable[[str, str], str]:
    try:
        from pyspark.dbutils import DBUtils  # exists only on Databricks
    except ImportError:
        raise ConfigError("mixpanel.secret_scope needs Databricks' dbutils, which is not here; elsewhere set "
                          "MP_SERVICE_ACCOUNT_USER and MP_SERVICE_ACCOUNT_SECRET, or MP_PROJECT_TOKEN") from None
    secrets_api = DBUtils(spark).secrets

    def get_secret(scope: str, key: str) -> str:
        try:
            return secrets_api.get(scope, key)
        except Exception:  # no such scope or key: reported as missing, by name
            return ""

    return get_secret


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def format_summary(s: Summary) -> str:
    imported_label = "would import" if s.dry_run else "imported"
    lines = [
        f"mp-spark run {s.run_id}" + ("  (dry run: nothing was sent)" if s.dry_run else ""),
        f"  {'rows read':<13}{s.rows_read:>14,}",
        f"  {imported_label:<13}{s.imported:>14,}",
        f"  {'rejected':<13}{s.rejected:>14,}   refused by Mixpanel",
        f"  {'invalid':<13}{s.invalid:>14,}   set aside before sending",
        *([f"  {'trimmed':<13}{s.trimmed:>14,}   sent with a value cut to fit Mixpanel's limits"]
          if s.trimmed else []),
        *([f"  {s.resumed_partitions} of {s.partitions} partitions finished before this resumed run"]
          if s.resumed_partitions else []),
        f"  {s.partitions} partitions, {s.batches} batches, {s.requests} requests, {s.retries} retries",
        f"  {s.raw_bytes / 1e6:,.1f} MB of JSON, {s.gzip_bytes / 1e6:,.1f} MB gzip, "
        f"{s.seconds:,.1f} s, {s.events_per_second:,.0f} events/s",
        f"  results: {s.results_path}",
    ]
    if s.rejected or s.invalid:
        lines.append(f"  reasons for every row not imported: {s.results_path}/rejected/")
    if not s.balanced:
        lines.append("  ACCOUNTING MISMATCH: rows read != imported + rejected + invalid (see the log)")
    return "\n".join(lines)
