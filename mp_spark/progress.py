"""The driver's view of a running send: a progress line every `job.progress_interval_s`.

The driver learns how each partition went when its Spark job ends, so progress moves partition by
partition; the rate and the time left are this attempt's, over the rows still to send.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mp_spark.tally import OK, PartitionOutcome

log = logging.getLogger(__name__)


class Progress:
    def __init__(
        self,
        *,
        total_rows: int,
        partitions: int,
        finished_before: list[PartitionOutcome],
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._total_rows = total_rows
        self._partitions = partitions
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._sending = 0
        self._rows_before = sum(o.tally.rows + o.tally.invalid for o in finished_before)
        self._done: list[PartitionOutcome] = list(finished_before)

    def sending(self) -> None:
        with self._lock:
            self._sending += 1

    def finished(self, outcome: PartitionOutcome | None) -> None:
        """A partition's job ended: with its outcome, or None when it was stopped before it had one."""
        with self._lock:
            self._sending -= 1
            if outcome is not None and outcome.status == OK:
                self._done.append(outcome)

    @contextmanager
    def running(self) -> Iterator[Progress]:
        """Log a line every interval while the body runs, and once more at the end (also on failure)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self._interval_s):
                log.info("%s", self.line())

        thread = threading.Thread(target=loop, name="mp-spark-progress", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            log.info("%s", self.line())

    def line(self) -> str:
        with self._lock:
            done, sending = list(self._done), self._sending
        rows_done = sum(o.tally.rows + o.tally.invalid for o in done)
        elapsed = max(self._clock() - self._started, 1e-9)
        rows_per_s = (rows_done - self._rows_before) / elapsed
        left = self._total_rows - rows_done
        if left <= 0:
            eta = "nothing left"
        elif rows_per_s > 0:
            eta = f"about {_duration(left / rows_per_s)} left"
        else:
            eta = "time left unknown yet"
        percent = rows_done / self._total_rows if self._total_rows else 1.0
        return (
            f"progress: {percent:.0%} ({rows_done:,} of {self._total_rows:,} rows): "
            f"{sum(o.tally.imported for o in done):,} imported, {sum(o.tally.rejected for o in done):,} rejected, "
            f"{sum(o.tally.invalid for o in done):,} invalid; {rows_per_s:,.0f} rows/s; {eta}; "
            f"{len(done)} of {self._partitions} partitions done, {sending} sending"
        )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"
