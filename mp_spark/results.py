"""What a run leaves behind in `job.results_path`: summary.json, partitions/ and rejected/.

Everything is written through Spark (DataFrame writers, and Hadoop's FileSystem for the single
summary file), so the results path can be anything Spark writes: local, s3://, dbfs:/, abfss://.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mp_spark.partition import PARTITION_SCHEMA, PartitionResult
from mp_spark.storage import write_text

REJECTED_SCHEMA = T.StructType([
    T.StructField("stage", T.StringType()),  # "validation" (set aside by the job) or "mixpanel" (refused by /import)
    T.StructField("field", T.StringType()),
    T.StructField("message", T.StringType()),
    T.StructField("insert_id", T.StringType()),  # for profile updates: the distinct_id or group id
    T.StructField("partition", T.IntegerType()),
    T.StructField("event", T.StringType()),  # the event's JSON line, as sent or as it would have been sent
])


@dataclass(frozen=True)
class Summary:
    run_id: str
    dry_run: bool
    rows_read: int
    imported: int
    rejected: int
    invalid: int
    trimmed: int  # of the events sent, those with a property value cut to fit Mixpanel's limits
    partitions: int
    resumed_partitions: int  # of those, the ones an earlier, interrupted attempt of the run finished
    batches: int
    requests: int
    retries: int
    raw_bytes: int
    gzip_bytes: int
    seconds: float
    events_per_second: float
    results_path: str

    @property
    def balanced(self) -> bool:
        """The accounting identity: every row read was imported, rejected by Mixpanel, or set aside."""
        return self.rows_read == self.imported + self.rejected + self.invalid


def default_results_path(run_id: str) -> str:
    return os.path.abspath(os.path.join("mp_spark_runs", run_id))


class ResultsWriter:
    def __init__(self, spark: SparkSession, path: str) -> None:
        self._spark = spark
        self.path = path.rstrip("/")
        self._rejected_written = False

    def write_invalid(self, invalid_events: DataFrame) -> None:
        """Rows the job judged invalid; expects the columns `invalid`, `key` and `line`."""
        invalid_events.select(
            F.lit("validation").alias("stage"),
            F.col("invalid.field").alias("field"),
            F.col("invalid.message").alias("message"),
            F.col("key").alias("insert_id"),
            F.lit(None).cast("int").alias("partition"),
            F.col("line").alias("event"),
        ).write.mode("overwrite").json(self._child("rejected"))
        self._rejected_written = True

    def write_partitions(self, partitions: list[PartitionResult]) -> None:
        rows = [tuple(getattr(p, name) for name in PARTITION_SCHEMA.names) for p in partitions]
        frame = self._spark.createDataFrame(rows, PARTITION_SCHEMA).coalesce(1)
        frame.write.mode("overwrite").json(self._child("partitions"))
        # Mixpanel's refusals come back with the tallies; they join the job's own in rejected/.
        rejected = [
            ("mixpanel", r.field, r.message, r.insert_id, p.index, r.event) for p in partitions for r in p.rejections
        ]
        if rejected or not self._rejected_written:
            mode = "append" if self._rejected_written else "overwrite"
            frame = self._spark.createDataFrame(rejected, REJECTED_SCHEMA).coalesce(1)
            frame.write.mode(mode).json(self._child("rejected"))

    def write_summary(self, summary: Summary) -> None:
        text = json.dumps(dataclasses.asdict(summary), indent=2) + "\n"
        write_text(self._spark, self._child("summary.json"), text)

    def _child(self, name: str) -> str:
        return f"{self.path}/{name}"

