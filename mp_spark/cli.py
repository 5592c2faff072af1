"""Command line: `mp-spark-backfill`, `python jobs/backfill.py` and `spark-submit jobs/backfill.py`.

Exit codes: 0 every row imported; 1 some rows rejected or invalid (see the results); 2 a config
or credential problem, found before or during sending; 3 sending failed after every retry (Mixpanel
kept answering 429/5xx, or the network kept failing): rerun, and the $insert_ids dedupe what was sent.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from mp_spark.backfill import (
    BackfillAbortedError,
    BackfillFailedError,
    RunOptions,
    preview_backfill,
    run_backfill,
)
from mp_spark.config import ConfigError, credentials_from_env, parse_config
from mp_spark.results import Summary, default_results_path

EXIT_OK, EXIT_SOME_NOT_IMPORTED, EXIT_CONFIG, EXIT_SEND_FAILED = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mp-spark-backfill", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML or JSON config file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set job.records_per_partition=50000")
    parser.add_argument("--dry-run", action="store_true",
                        help="show sample events and a property profile; validate, serialize, batch and gzip "
                             "everything, but send nothing")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)  # its INFO lines are about its own sockets
    try:
        with open(args.config, encoding="utf-8") as handle:
            config = parse_config(handle.read(), args.set)
        credentials = None if args.dry_run else credentials_from_env(os.environ, config.mixpanel)
    except (OSError, ConfigError) as exc:
        print(f"mp-spark: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    from mp_spark.session import get_spark  # after config checks: bad config fails without starting a JVM

    run_id = new_run_id()
    options = RunOptions(
        run_id=run_id,
        results_path=config.job.results_path or default_results_path(run_id),
        dry_run=args.dry_run,
    )
    spark = get_spark(with_delta=config.source.format == "delta")
    try:
        if args.dry_run:
            print(preview_backfill(spark, config).render())
        summary = run_backfill(spark, config, credentials, options)
    except ConfigError as exc:
        print(f"mp-spark: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BackfillAbortedError as exc:
        print(f"mp-spark: stopped: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BackfillFailedError as exc:
        print(f"mp-spark: sending failed after every retry ({exc}); rerun the job: Mixpanel dedupes "
              "what was already sent by $insert_id", file=sys.stderr)
        return EXIT_SEND_FAILED
    print(format_summary(summary))
    all_imported = summary.balanced and summary.rejected == 0 and summary.invalid == 0
    return EXIT_OK if all_imported else EXIT_SOME_NOT_IMPORTED


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
