"""The driver's view of a running send: a progress line every `job.progress_interval_s`.

A phase is one Spark job whose sending stage has one task per partition (or, coalesced, one per
share of them). The driver learns how far that stage is from Spark's own task counts, through the
status tracker on classic Spark and the progress reports of a Spark Connect server, so progress
moves task by task; rows are estimated from the partitions sent. The rate and the time left are
this attempt's, over the rows still to send; the summary at the end has the exact counts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pyspark.sql import SparkSession

from mp_spark.session import is_connect

log = logging.getLogger(__name__)

# What SparkContext.setJobGroup sets, as the thread's local properties.
JOB_GROUP_PROPERTIES = ("spark.jobGroup.id", "spark.job.description", "spark.job.interruptOnCancel")


class Progress:
    def __init__(self, *, total_rows: int, partitions: int, sent_before: int, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._rows_per_partition = total_rows / partitions if partitions else 0.0
        self._total_rows = total_rows
        self._partitions = partitions
        self._interval_s = interval_s
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._sent_before = sent_before
        self._finished = sent_before  # partitions sent: by earlier attempts, and in this one's finished phases
        self._phase: tuple[int, int] = (0, 1)  # the running phase: its partitions, its sending tasks
        self._tasks_done: Callable[[], int | None] = lambda: 0

    @contextmanager
    def phase(self, partitions: int, tasks: int, tasks_done: Callable[[], int | None]) -> Iterator[None]:
        """A phase sending `partitions` in `tasks` tasks, whose finished tasks `tasks_done` counts
        (None until they start) until `sent` says what its outcomes show (or the phase fails)."""
        with self._lock:
            self._phase, self._tasks_done = (partitions, max(tasks, 1)), tasks_done
        try:
            yield
        except BaseException:
            self.sent(0)
            raise

    def sent(self, partitions: int) -> None:
        """A phase ended, and its outcomes say how many of its partitions were sent."""
        with self._lock:
            self._finished += partitions
            self._phase, self._tasks_done = (0, 1), lambda: 0

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
            (partitions, tasks), finished, tasks_done = self._phase, self._finished, self._tasks_done
        sending = tasks_done()
        done = finished + partitions * min(sending or 0, tasks) / tasks
        rows_done = min(round(done * self._rows_per_partition), self._total_rows)
        elapsed = max(self._clock() - self._started, 1e-9)
        rows_per_s = (done - self._sent_before) * self._rows_per_partition / elapsed
        left = self._total_rows - rows_done
        if left <= 0:
            eta = "nothing left"
        elif sending is None:  # the phase's first stage: a large source shows 0% for a while, and this says why
            eta = "reading the records and spreading them over partitions; sending starts next"
        elif rows_per_s > 0:
            eta = f"about {_duration(left / rows_per_s)} left"
        else:
            eta = "sending: the time left is known once the first sending tasks end"
        percent = rows_done / self._total_rows if self._total_rows else 1.0
        return (f"progress: {percent:.0%} ({int(done)} of {self._partitions} partitions sent, about "
                f"{rows_done:,} of {self._total_rows:,} rows); {rows_per_s:,.0f} rows/s; {eta}")


@contextmanager
def task_counter(spark: SparkSession, group: str, tasks: int) -> Iterator[Callable[[], int | None]]:
    """How many tasks of the running job's sending stage (its last, of `tasks` tasks) have finished,
    or None before that stage starts.

    The job must run in this thread, within the block: on classic Spark it is found by its job group
    (set here), on Spark Connect by the server's progress reports to this session.
    """
    if is_connect(spark):
        latest: dict[str, int | None] = {"done": None}

        def on_report(*, stages: list | None, **_: object) -> None:  # Spark passes keywords
            done = sending_stage_done([(s.stage_id, s.num_tasks, s.num_completed_tasks) for s in stages or []], tasks)
            if done is not None:  # a report without the sending stage says nothing of it
                latest["done"] = max(latest["done"] or 0, done)

        spark.registerProgressHandler(on_report)
        try:
            yield lambda: latest["done"]
        finally:
            spark.removeProgressHandler(on_report)
        return
    context = spark.sparkContext
    tracker = context.statusTracker()

    def done() -> int | None:
        stages = [tracker.getStageInfo(stage) for job in tracker.getJobIdsForGroup(group)
                  for stage in (tracker.getJobInfo(job).stageIds if tracker.getJobInfo(job) else [])]
        return sending_stage_done([(s.stageId, s.numTasks, s.numCompletedTasks) for s in stages if s is not None],
                                  tasks)

    # The thread's own group comes back after: an incremental run's micro-batch runs in its stream's,
    # which stopping the stream cancels.
    before = {key: context.getLocalProperty(key) for key in JOB_GROUP_PROPERTIES}
    context.setJobGroup(group, "mp-spark: sending")
    try:
        yield done
    finally:
        for key, value in before.items():
            context.setLocalProperty(key, value)  # type: ignore[arg-type]  (None removes it)


def sending_stage_done(stages: list[tuple[int, int, int]], tasks: int) -> int | None:
    """The finished tasks of the sending stage, from the (stage id, tasks, finished tasks) of the
    phase's job seen so far, or None before it starts.

    The sending stage reads the shuffle that the map side writes, so it is never the first stage:
    the map side may have as many tasks (a source of as many files), and runs first as a job of its
    own (adaptive execution), but its ids are lower. The sending stage is the last of `tasks` tasks.
    """
    first = min((stage_id for stage_id, _, _ in stages), default=None)
    sending = [(stage_id, done) for stage_id, count, done in stages if count == tasks and stage_id != first]
    return max(sending)[1] if sending else None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"
