"""The driver's progress ticks on local Spark, with a results store that fails for a while."""

from dataclasses import asdict

from pyspark.sql import SparkSession

from mp_spark.partition import PartitionResult, TallyList
from mp_spark.progress import Progress


class FlakyLedger:
    """Stands in for mp_spark.ledger.Ledger on a store that refuses writes until `failing` is cleared."""

    path = "s3://results/run"

    def __init__(self) -> None:
        self.failing = True
        self.recorded: list[PartitionResult] = []

    def record(self, partitions: list[PartitionResult]) -> None:
        if self.failing:
            raise OSError("store unavailable")
        self.recorded += partitions


def finished(index: int) -> PartitionResult:
    return PartitionResult(index=index, rows=10, imported=10, rejected=0, invalid=0, trimmed=0, batches=1,
                           requests=1, retries=0, raw_bytes=100, gzip_bytes=30, seconds=1.0)


def test_a_partition_the_ledger_could_not_record_still_counts_and_is_recorded_at_a_later_tick(
    spark: SparkSession,
) -> None:
    tallies = spark.sparkContext.accumulator([], TallyList())
    ledger = FlakyLedger()
    progress = Progress(sc=spark.sparkContext, tallies=tallies, ledger=ledger, total_rows=20, finished_before={},
                        partitions=2, interval_s=60)

    tallies.add([asdict(finished(0))])
    progress.tick()
    assert list(progress.finished) == [0] and ledger.recorded == []  # in the summary even though not recorded

    ledger.failing = False
    tallies.add([asdict(finished(1))])
    progress.tick()
    assert [p.index for p in ledger.recorded] == [0, 1]
    assert progress.line().startswith("progress: 100% (20 of 20 rows): 20 imported")
