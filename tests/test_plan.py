"""The pure planning step: partitions from staging files, phases, what a resume skips, tasks at once."""

from mp_spark.plan import Partition, sending_phases, shuffle_partitions, staging_partitions

FILES = [
    "s3://b/run/staging/phase=1/part-00001-x.parquet",
    "s3://b/run/staging/phase=0/part-00001-x.parquet",
    "s3://b/run/staging/phase=1/part-00000-x.parquet",
    "s3://b/run/staging/phase=0/part-00000-x.parquet",
]


def test_partitions_are_numbered_phase_by_phase_in_file_order() -> None:
    partitions = staging_partitions(FILES)
    assert [(p.index, p.phase, p.path.rsplit("/", 2)[1:]) for p in partitions] == [
        (0, 0, ["phase=0", "part-00000-x.parquet"]), (1, 0, ["phase=0", "part-00001-x.parquet"]),
        (2, 1, ["phase=1", "part-00000-x.parquet"]), (3, 1, ["phase=1", "part-00001-x.parquet"]),
    ]
    assert staging_partitions(["file:/r/staging/part-00000-y.parquet"]) == [
        Partition(0, "file:/r/staging/part-00000-y.parquet", 0)]  # a single phase has no phase=N/ folder


def test_a_resume_skips_what_was_sent_and_a_phase_with_nothing_left_is_dropped() -> None:
    partitions = staging_partitions(FILES)
    phases = sending_phases(partitions, {0, 1, 3}, cores=8, max_in_flight=16)
    assert [[p.index for p in phase.partitions] for phase in phases] == [[2]]
    assert phases[0].tasks == 1


def test_tasks_at_once_are_bounded_by_the_budget_the_cores_and_the_work() -> None:
    many = [Partition(i, f"p{i}") for i in range(100)]
    assert sending_phases(many, set(), cores=200, max_in_flight=16)[0].tasks == 16  # a big cluster: the budget
    assert sending_phases(many, set(), cores=2, max_in_flight=16)[0].tasks == 2  # local[2]: 8 requests each
    assert sending_phases(many[:3], set(), cores=200, max_in_flight=16)[0].tasks == 3
    assert sending_phases(many, set(), cores=0, max_in_flight=16)[0].tasks == 1


def test_records_are_spread_over_enough_partitions_for_the_size_asked() -> None:
    assert shuffle_partitions(0, 200_000) == 1
    assert shuffle_partitions(200_000, 200_000) == 1
    assert shuffle_partitions(200_001, 200_000) == 2
