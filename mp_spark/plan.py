"""The pure part of a run: how many partitions, in which phases, what a resume skips, and how many
tasks send at once. No Spark here, so every rule is checked by plain unit tests.

A phase's records are spread by their key over its partitions (hash partitioning, which puts the
same record in the same partition every time the same records are read), and partitions are
numbered across phases: phase 0's first, then phase 1's. The run's manifest keeps each phase's
partition count, so that a resumed run numbers the partitions as the run did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    number: int  # 0: sent first (with job.order recent_first, the recent window); 1: after it
    first: int  # the index of its first partition
    partitions: int  # how many partitions its records are spread over
    to_send: tuple[int, ...]  # the indices to send now
    tasks: int  # how many tasks send at once
    coalesced: bool  # the partitions are sent by `tasks` tasks, each sending its share one after another


MIN_BALANCED_SHARE = 10_000  # records: five full requests; fewer are not worth another task


def shuffle_partitions(rows: int, records_per_partition: int, tasks: int = 1) -> int:
    """How many partitions some records are spread over: about `records_per_partition` each (at least
    one partition), rounded up to a multiple of the `tasks` that send at once, so that the last wave
    keeps every task busy (five partitions on two cores would leave one idle while the fifth is
    sent). Records too few to give every partition of the rounded count `MIN_BALANCED_SHARE` are not
    rounded."""
    by_size = max(1, math.ceil(rows / records_per_partition))
    balanced = math.ceil(by_size / max(1, tasks)) * max(1, tasks)
    return balanced if rows >= balanced * MIN_BALANCED_SHARE else by_size


def sending_phases(phase_partitions: list[int], finished: set[int], *, cores: int, max_in_flight: int,
                   fixed_cores: bool = False) -> list[Phase]:
    """What to send, phase after phase, leaving out the partitions an earlier attempt finished.

    Requests in flight = tasks sending at once x requests per task, and the job-wide budget is
    `max_in_flight`: so no more tasks than that (each keeps at least one request going), and no
    more than the cluster runs at once, or the budget would be spread over tasks that wait. On local
    Spark (`fixed_cores`), which runs `cores` tasks at once for the whole run, each partition is a
    task of its own, so progress and retries go partition by partition. A cluster may grow during
    the run, and may already run more tasks at once than the budget allows: there the partitions are
    coalesced into `tasks` tasks, each sending its share one partition after another.
    """
    phases, first = [], 0
    for number, partitions in enumerate(phase_partitions):
        to_send = tuple(i for i in range(first, first + partitions) if i not in finished)
        if to_send:
            tasks = max(1, min(len(to_send), max_in_flight, cores))
            coalesced = tasks < len(to_send) and (cores > tasks or not fixed_cores)
            phases.append(Phase(number, first, partitions, to_send, tasks, coalesced))
        first += partitions
    return phases
