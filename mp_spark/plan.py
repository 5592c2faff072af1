"""The pure part of a run: which partitions there are, in which phases, what a resume skips, and how
many tasks send at once. No Spark here, so every rule is checked by plain unit tests.

A partition is one file of the run's staging data (`mp_spark.results`): the records the source
gave, mapped, checked and serialized, at most `job.records_per_partition` to a file. The files
never change once written, so a partition's index names the same records in every attempt.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

PHASE_IN_PATH = re.compile(r"/phase=(\d+)/")


@dataclass(frozen=True)
class Partition:
    index: int
    path: str  # its staging file
    phase: int = 0  # 0: sent first (with job.order recent_first, the recent window); 1: after it


@dataclass(frozen=True)
class Phase:
    partitions: tuple[Partition, ...]  # to send now, in order
    tasks: int  # how many send at once


def staging_partitions(files: list[str]) -> list[Partition]:
    """The run's partitions from its staging files: phase by phase, each phase in file-name order."""
    def phase_of(path: str) -> int:
        found = PHASE_IN_PATH.search(path)
        return int(found.group(1)) if found else 0

    ordered = sorted(files, key=lambda path: (phase_of(path), path))
    return [Partition(index, path, phase_of(path)) for index, path in enumerate(ordered)]


def shuffle_partitions(rows: int, records_per_partition: int) -> int:
    """How many partitions the records are spread over before they are written (at least one)."""
    return max(1, math.ceil(rows / records_per_partition))


def sending_phases(partitions: list[Partition], finished: set[int], *, cores: int, max_in_flight: int
                   ) -> list[Phase]:
    """What to send, phase after phase, leaving out the partitions an earlier attempt finished.

    Requests in flight = tasks sending at once x requests per task, and the job-wide budget is
    `max_in_flight`: so no more tasks than that (each keeps at least one request going), and no
    more than the cluster runs at once, or the budget would be spread over tasks that wait.
    """
    phases = []
    for phase in sorted({p.phase for p in partitions}):
        to_send = tuple(p for p in partitions if p.phase == phase and p.index not in finished)
        if to_send:
            phases.append(Phase(to_send, tasks=max(1, min(len(to_send), max_in_flight, cores))))
    return phases
