"""Run a DataFrame's partitions at most N at a time, however many cores the cluster has.

One Spark job runs as many tasks at once as the cluster has cores, and a sending task keeps at
least one request in flight: on a 200-core cluster that is 200 requests, where Mixpanel advises
10-20 in all. So when the cluster has more cores than N, the driver runs one Spark job per
partition from N threads instead. The jobs share the DataFrame's shuffle, which Spark computes once
with the whole cluster; only the sending is held to N tasks at a time.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Sequence

from pyspark import InheritableThread, SparkContext
from pyspark.sql import DataFrame


def run_partitions(
    sc: SparkContext, frame: DataFrame, partitions: Sequence[int], *, at_once: int, describe: Callable[[int], str]
) -> None:
    """Compute `partitions` of `frame` for their side effects, at most `at_once` at a time.

    When the cluster runs no more tasks at once than that anyway, this is one action over the whole
    frame, the cheapest way (a job per partition took 5-10% longer on the benchmark data): the partitions
    not listed run too, so they must be empty.

    Otherwise the first failure cancels the jobs still running (as a failed task aborts a whole
    stage) and is raised once every thread has stopped. `describe(partition)` names a partition's job
    in the Spark UI.
    """
    if at_once >= min(len(partitions), sc.defaultParallelism):
        frame.collect()  # it has no rows: its tasks' work is their side effects
        return
    rdd = frame.rdd  # one RDD for every job, so that they share its shuffle
    tag = f"mp-spark-{uuid.uuid4().hex}"
    pending = iter(partitions)
    lock = threading.Lock()
    failures: list[BaseException] = []

    def fail(exc: BaseException) -> None:
        with lock:
            first = not failures
            failures.append(exc)
        if first:
            sc.cancelJobsWithTag(tag)

    def run_some() -> None:
        sc.addJobTag(tag)
        sc.setInterruptOnCancel(True)
        while True:
            with lock:
                partition = None if failures else next(pending, None)
            if partition is None:
                return
            sc.setJobDescription(describe(partition))
            try:
                sc.runJob(rdd, _discard, [partition])
            except Exception as exc:
                fail(exc)
                return

    threads = [InheritableThread(target=run_some, name=f"mp-spark-send-{i}") for i in range(at_once)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except BaseException as exc:  # Ctrl-C on the driver: stop the jobs rather than wait for them
        fail(exc)
        raise
    if failures:
        raise failures[0]


def _discard(rows: Iterable[object]) -> list[object]:
    return []
