"""The driver's progress line, from partition outcomes, with a clock the test controls."""

from mp_spark.progress import Progress
from mp_spark.tally import EXHAUSTED, PartitionOutcome, Tally


def outcome(index: int, rows: int = 100, status: str = "ok") -> PartitionOutcome:
    return PartitionOutcome(index, Tally(rows=rows, imported=rows - 5, rejected=5, invalid=10), status)


def test_the_line_counts_sent_partitions_and_estimates_from_this_attempt_s_rate() -> None:
    now = [0.0]
    progress = Progress(total_rows=1100, partitions=10, finished_before=[outcome(0)], interval_s=10,
                        clock=lambda: now[0])
    for _ in range(3):
        progress.sending()
    progress.finished(outcome(1))
    progress.finished(outcome(2, status=EXHAUSTED))  # not sent: counts for nothing
    now[0] = 2.0

    line = progress.line()
    # 3 partitions of 110 rows (100 sent + 10 invalid) are done: 2 before, 1 by this attempt in 2 s.
    assert line.startswith("progress: 20% (220 of 1,100 rows): 190 imported, 10 rejected, 20 invalid; 55 rows/s")
    assert "about 16 s left; 2 of 10 partitions done, 1 sending" in line


def test_a_partition_stopped_without_an_outcome_is_no_longer_sending() -> None:
    progress = Progress(total_rows=0, partitions=1, finished_before=[], interval_s=10)
    progress.sending()
    progress.finished(None)
    assert progress.line().endswith("nothing left; 0 of 1 partitions done, 0 sending")
