"""The sending task's rules across tasks and attempts, run in real Spark tasks against the fake Mixpanel."""

import base64
import shutil
import uuid
from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mp_spark.config import MixpanelConfig
from mp_spark.endpoints import Import
from mp_spark.executor import OUTCOME, SENT_SCHEMA, STOPPED_NOTES, partition_sender
from mp_spark.sender import SenderSettings
from mp_spark.tally import FATAL, UNSENT
from tests.fake_mixpanel import FakeMixpanel

LINE = '{"event":"E","properties":{"time":1704164645000,"distinct_id":"u1","$insert_id":"a1"}}\n'


def one_record(spark: SparkSession) -> DataFrame:
    """A phase's input to its sending task (executor.SENDER_INPUT): partition 0, one record to send."""
    return spark.createDataFrame([(0, LINE, 0, None, None, None, None)],
                                 "partition int, line string, trimmed byte, field string, message string, "
                                 "insert_id string, event string")


def outcomes(df: DataFrame) -> list[tuple[str, str]]:
    return [(row.status, row.message) for row in df.filter(F.col("record") == OUTCOME).collect()]


def test_a_stop_holds_back_other_tasks_but_not_the_same_tasks_next_attempt(
    spark: SparkSession, mixpanel: FakeMixpanel,
) -> None:
    """A retried task's first attempt left rows that Spark does not keep: the retry sends its partitions
    again, and their outcomes give their own cause (a 401 here), not "not sent"."""
    wrong = base64.b64encode(b"sa-user:not-the-secret").decode()
    endpoint = Import(f"{mixpanel.url}/import?strict=1&project_id={mixpanel.project_id}", f"Basic {wrong}")
    attempt = f"test-{uuid.uuid4().hex}"
    send = partition_sender(endpoint, SenderSettings.for_tasks(MixpanelConfig()), attempt, dry_run=False)

    def first_attempt_then_retry(record_batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        record_batches = list(record_batches)
        for _ in send(iter(record_batches)):  # the first attempt: its rows are lost with it
            pass
        yield from send(iter(record_batches))  # the retry: the same task (stage and index) runs again

    try:
        retried = outcomes(one_record(spark).mapInArrow(first_attempt_then_retry, SENT_SCHEMA))
        [(status, message)] = outcomes(one_record(spark).mapInArrow(send, SENT_SCHEMA))  # a task of a later stage
    finally:
        shutil.rmtree(STOPPED_NOTES / attempt, ignore_errors=True)

    assert [status for status, _ in retried] == [FATAL] and "401" in retried[0][1]
    assert status == UNSENT and message.startswith("not sent: partition 0 stopped the run before it (fatal)")
    assert mixpanel.requests == 2
