"""The pure planning step: partitions numbered across phases, what a resume skips, tasks at once."""

from mp_spark.plan import Phase, sending_phases, shuffle_partitions


def test_partitions_are_numbered_across_phases_and_a_resume_skips_what_was_sent() -> None:
    assert sending_phases([2, 3], set(), cores=8, max_in_flight=16) == [
        Phase(0, first=0, partitions=2, to_send=(0, 1), tasks=2, coalesced=False),
        Phase(1, first=2, partitions=3, to_send=(2, 3, 4), tasks=3, coalesced=False),
    ]
    resumed = sending_phases([2, 3], {0, 1, 3}, cores=8, max_in_flight=16)  # phase 0 has nothing left
    assert [(p.number, p.first, p.partitions, p.to_send, p.tasks) for p in resumed] == [(1, 2, 3, (2, 4), 2)]
    assert sending_phases([2, 3], set(range(5)), cores=8, max_in_flight=16) == []


def test_tasks_at_once_are_bounded_by_the_budget_the_cores_and_the_work() -> None:
    def first_phase(partitions: int, cores: int, fixed_cores: bool = False) -> tuple[int, bool]:
        (phase,) = sending_phases([partitions], set(), cores=cores, max_in_flight=16, fixed_cores=fixed_cores)
        return phase.tasks, phase.coalesced

    assert first_phase(100, cores=200) == (16, True)  # a big cluster: the budget, each task sends its share
    assert first_phase(100, cores=8) == (8, True)  # a small cluster may grow: still no more than 8 tasks
    assert first_phase(100, cores=2, fixed_cores=True) == (2, False)  # local[2]: a task per partition, 2 at once
    assert first_phase(100, cores=32, fixed_cores=True) == (16, True)  # local[32]: the budget
    assert first_phase(3, cores=200) == (3, False)  # a task per partition is already within the budget
    assert first_phase(100, cores=0) == (1, True)


def test_records_are_spread_over_enough_partitions_for_the_size_asked() -> None:
    assert shuffle_partitions(0, 200_000) == 1
    assert shuffle_partitions(200_000, 200_000) == 1
    assert shuffle_partitions(200_001, 200_000) == 2


def test_partitions_come_in_whole_waves_of_the_tasks_sending_at_once() -> None:
    assert shuffle_partitions(1_000_000, 200_000, tasks=2) == 6  # not 5: the fifth would leave a core idle
    assert shuffle_partitions(200_000, 200_000, tasks=2) == 2  # one partition would leave a core idle
    assert shuffle_partitions(1_000_000, 200_000, tasks=16) == 16
    assert shuffle_partitions(10_000_000, 200_000, tasks=16) == 64
    assert shuffle_partitions(10_000_000, 200_000, tasks=5) == 50  # already whole waves
    assert shuffle_partitions(15_000, 200_000, tasks=2) == 1  # 7,500 a task: not worth a second one
    assert shuffle_partitions(5_000, 1_000, tasks=2) == 5  # small partitions asked for stay as asked
