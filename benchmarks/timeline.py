"""Where a run's time went, by step of the driver: `python benchmarks/timeline.py JOB_ARGS` (not part of the tests).

Runs the job with its own arguments, for example `--config benchmarks/out/command-m.json
--dry-run`, and prints to stdout (beside the job's own summary), in seconds from the process's
start, when each of its steps begins (>) and ends (<), and on which thread: the session, reading
and mapping the source, the count, the credential check, the manifest, each phase's sending job,
the preview and the results.
Beside `benchmarks/stages.py` (the same run's Spark stages), it shows what the driver waits on.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable

STARTED = time.monotonic()

from mp_spark import cli, preview, results, run  # noqa: E402  (imports are part of the timeline)

STEPS = {
    cli: ["get_spark"],
    run: ["source_rows", "prepare_records", "count_phases", "check_credentials", "prepare_executors",
          "write_results"],
    run.Sending: ["send"],
    results.RunFiles: ["write_manifest", "read_phase"],
    preview.Previewer: ["profile_column", "show"],
    preview: ["profile", "fingerprint_table"],
}


def note(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:7.2f}] {threading.current_thread().name[:28]:28} {text}", flush=True)


def timed(name: str, step: Callable) -> Callable:
    @functools.wraps(step)
    def timed_step(*args: object, **kwargs: object) -> object:
        note(f"> {name}")
        try:
            return step(*args, **kwargs)
        finally:
            note(f"< {name}")

    return timed_step


def main(argv: list[str]) -> int:
    note("imported")
    for owner, names in STEPS.items():
        for name in names:
            setattr(owner, name, timed(name, getattr(owner, name)))
    try:
        return cli.main(argv)
    finally:
        note("end")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
