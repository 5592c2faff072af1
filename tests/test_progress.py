"""The driver's progress line, from finished tasks, with a clock the test controls."""

from pyspark.sql import SparkSession

from mp_spark.progress import JOB_GROUP_PROPERTIES, Progress, sending_stage_done, task_counter


def test_the_line_estimates_rows_from_finished_tasks_and_this_attempt_s_rate() -> None:
    now = [0.0]
    done = [0]
    progress = Progress(total_rows=1000, partitions=10, sent_before=2, interval_s=10, clock=lambda: now[0])
    with progress.phase(8, 4, lambda: done[0]):  # 8 partitions coalesced into 4 tasks
        done[0] = 1
        now[0] = 2.0
        line = progress.line()
    # 2 partitions sent before, and 1 task of 4 (2 partitions) by this attempt in 2 s: 100 rows/s.
    assert line == "progress: 40% (4 of 10 partitions sent, about 400 of 1,000 rows); 100 rows/s; about 6 s left"
    done[0] = 4
    assert progress.line().startswith("progress: 100% (10 of 10 partitions sent")  # its job ended ...
    progress.sent(7)  # ... and its outcomes say that one partition of the 8 was not sent
    assert progress.line().startswith("progress: 90% (9 of 10 partitions sent, about 900 of 1,000 rows)")


def test_nothing_done_yet_has_no_estimate() -> None:
    progress = Progress(total_rows=500, partitions=5, sent_before=0, interval_s=10)
    with progress.phase(5, 5, lambda: 0):
        assert progress.line().endswith("0 rows/s; sending: the time left is known once the first sending tasks end")
    assert Progress(total_rows=0, partitions=1, sent_before=0, interval_s=10).line().endswith("nothing left")


def test_before_the_sending_stage_starts_the_line_says_what_is_running() -> None:
    progress = Progress(total_rows=500, partitions=5, sent_before=0, interval_s=10)
    with progress.phase(5, 5, lambda: None):
        assert progress.line() == ("progress: 0% (0 of 5 partitions sent, about 0 of 500 rows); 0 rows/s; reading "
                                   "the records and spreading them over partitions; sending starts next")


def test_the_map_side_does_not_count_as_sent_even_with_as_many_tasks() -> None:
    # What Spark reports for a 5-file source spread over 5 partitions (stage id, tasks, finished):
    # adaptive execution first runs the map side alone, then the sending stage after it (and the
    # map side again, skipped, under a new id).
    map_side_alone = [(0, 5, 5)]
    assert sending_stage_done(map_side_alone, 5) is None
    assert sending_stage_done([(0, 5, 5), (1, 5, 0), (2, 5, 3)], 5) == 3
    assert sending_stage_done([(7, 2, 2), (8, 5, 1)], 5) == 1  # a map side of other size, one job
    assert sending_stage_done([], 5) is None


def test_a_failed_phase_counts_none_of_its_tasks() -> None:
    progress = Progress(total_rows=500, partitions=5, sent_before=1, interval_s=10)
    try:
        with progress.phase(4, 4, lambda: 3):
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert progress.line().startswith("progress: 20% (1 of 5 partitions sent")


def test_the_sending_jobs_group_gives_the_thread_its_own_back(spark: SparkSession) -> None:
    """An incremental run's micro-batch runs in its stream's job group, which stopping the stream cancels."""
    context = spark.sparkContext
    context.setJobGroup("the-stream", "the stream's micro-batch", interruptOnCancel=True)
    try:
        with task_counter(spark, "mp-spark-sending", 1):
            during = context.getLocalProperty("spark.jobGroup.id")
        after = [context.getLocalProperty(key) for key in JOB_GROUP_PROPERTIES]
    finally:
        for key in JOB_GROUP_PROPERTIES:
            context.setLocalProperty(key, None)  # type: ignore[arg-type]
    assert during == "mp-spark-sending"
    assert after == ["the-stream", "the stream's micro-batch", "true"]
