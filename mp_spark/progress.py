"""The driver's view of a running backfill.

Every `job.progress_interval_s` a thread on the driver reads the tallies of the partitions that
finished since the last tick (Spark merges a task's accumulator update when the task ends), records
them in the run's ledger, so a resumed run skips them, and logs where the run stands.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pyspark import Accumulator, SparkContext

from mp_spark.ledger import Ledger
from mp_spark.partition import PartitionResult

log = logging.getLogger(__name__)


class Progress:
    def __init__(
        self,
        *,
        sc: SparkContext,
        tallies: Accumulator,
        ledger: Ledger,
        total_rows: int,
        finished_before: dict[int, PartitionResult],
        partitions: int,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sc = sc
        self._tallies = tallies
        self._ledger = ledger
        self._total_rows = total_rows
        self._partitions = partitions
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._handled = 0  # accumulator entries already handled
        self._unrecorded: list[PartitionResult] = []  # finished, but not yet in the ledger
        self._rows_before = sum(p.rows + p.invalid for p in finished_before.values())
        self.finished: dict[int, PartitionResult] = dict(finished_before)

    @contextmanager
    def running(self) -> Iterator[Progress]:
        """Tick in the background while the body runs, and once more at the end (also on failure)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self._interval_s):
                self.tick()

        thread = threading.Thread(target=loop, name="mp-spark-progress", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.tick()

    def tick(self) -> None:
        entries = self._tallies.value
        new = [PartitionResult.from_dict(d) for d in entries[self._handled :]]
        self._handled = len(entries)
        new = [p for p in new if p.index not in self.finished]  # a skipped (already finished) partition reports zeros
        self.finished.update({p.index: p for p in new})  # counted in the summary whatever the ledger does
        self._unrecorded += new
        try:
            self._ledger.record(self._unrecorded)
            self._unrecorded = []
        except Exception as exc:  # a slow or failing store must not stop the backfill: the next tick retries
            log.warning("could not record finished partitions in %s: %s", self._ledger.path, exc)
        log.info("%s", self.line())

    def line(self) -> str:
        done = list(self.finished.values())
        rows_done = sum(p.rows + p.invalid for p in done)
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
            f"{sum(p.imported for p in done):,} imported, {sum(p.rejected for p in done):,} rejected, "
            f"{sum(p.invalid for p in done):,} invalid; {rows_per_s:,.0f} rows/s; {eta}; "
            f"{len(done)} of {self._partitions} partitions done, {self._running_tasks()} running"
        )

    def _running_tasks(self) -> int:
        tracker = self._sc.statusTracker()
        stages = [tracker.getStageInfo(stage) for stage in tracker.getActiveStageIds()]
        return sum(stage.numActiveTasks for stage in stages if stage is not None)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"
