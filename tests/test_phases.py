"""Which phase a record is sent in, by its time in ms: phases of days, newest first."""

import datetime as dt

from pyspark.sql import DataFrame, SparkSession

from mp_spark.config import JobConfig
from mp_spark.phases import DAY_MS, phase_counts, phase_number, phase_records
from mp_spark.validation import EPOCH_MS_1971

NOW = int(dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
HOUR_MS = 3_600_000


def records(spark: SparkSession, *times: int | None) -> DataFrame:
    return spark.createDataFrame([(time,) for time in times], "time bigint")


def numbered(spark: SparkSession, job: JobConfig, *times: int | None) -> list[int | None]:
    return [row[0] for row in records(spark, *times).select(phase_number(job, NOW)).collect()]


def test_phases_of_days_go_back_from_now_and_a_later_time_is_in_the_newest(spark: SparkSession) -> None:
    job = JobConfig(phase_days=2)
    assert numbered(spark, job, NOW + HOUR_MS, NOW - 1, NOW - 2 * DAY_MS, NOW - 2 * DAY_MS - 1,
                    NOW - 4 * DAY_MS - 1, None) == [0, 0, 0, 1, 2, None]


def test_a_time_before_1971_goes_with_no_time_into_the_oldest_phase_not_back_phase_by_phase(
        spark: SparkSession) -> None:
    job = JobConfig(phase_days=1)
    assert numbered(spark, job, EPOCH_MS_1971, EPOCH_MS_1971 - 1, 0, -(2 ** 63)) == [
        (NOW - 1 - EPOCH_MS_1971) // DAY_MS, None, None, None]  # the last: no overflow either


def test_after_the_recent_days_phases_of_days_go_back_from_time_to(spark: SparkSession) -> None:
    job = JobConfig(order="recent_first", recent_days=1, phase_days=1, time_to="2026-05-29")  # NOW - 3 days
    assert numbered(spark, job, NOW - DAY_MS, NOW - 2 * DAY_MS, NOW - 3 * DAY_MS - 1, NOW - 4 * DAY_MS - 1,
                    None) == [0, 1, 1, 2, None]


def test_recent_first_alone_has_two_phases(spark: SparkSession) -> None:
    job = JobConfig(order="recent_first", recent_days=1)
    assert numbered(spark, job, NOW - 1, NOW - DAY_MS - 1, None) == [0, 1, 1]
    assert phase_counts(records(spark, NOW - 1), phase_number(job, NOW), job) == [1, 0]  # the older phase, empty
    assert phase_number(JobConfig(), NOW) is None  # one phase


def test_the_oldest_phase_takes_the_records_with_no_time_and_any_older_added_since(spark: SparkSession) -> None:
    job = JobConfig(phase_days=1)
    phase = phase_number(job, NOW)
    counted = records(spark, NOW - 1, NOW - 2, NOW - 2 * DAY_MS - 5, None)
    assert phase_counts(counted, phase, job) == [2, 0, 2]
    added_since = counted.union(records(spark, NOW - 9 * DAY_MS))
    assert [len(phase_records(added_since, phase, 3, number).collect()) for number in range(3)] == [2, 0, 3]
    assert phase_records(counted, None, 1, 0) is counted
