"""What a run leaves behind in `job.results_path`: summary.json, partitions/ and rejected/.

Everything is written through Spark (DataFrame writers, and Hadoop's FileSystem for the single
summary file), so the results path can be anything Spark writes: local, s3://, dbfs:/, abfss://.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from urllib.parse import urlparse

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from mp_spark.partition import RESULT_SCHEMA, PartitionResult

REJECTED_SCHEMA = T.StructType([
    T.StructField("stage", T.StringType()),  # "validation" (set aside by the job) or "mixpanel" (refused by /import)
    T.StructField("field", T.StringType()),
    T.StructField("message", T.StringType()),
    T.StructField("insert_id", T.StringType()),
    T.StructField("partition", T.IntegerType()),
    T.StructField("event", T.StringType()),  # the event's JSON line, as sent or as it would have been sent
])
# partitions/ holds the tasks' result rows without the rejections, which go to rejected/.
PARTITION_SCHEMA = T.StructType([f for f in RESULT_SCHEMA.fields if f.name != "rejections"])


@dataclass(frozen=True)
class Summary:
    run_id: str
    dry_run: bool
    rows_read: int
    imported: int
    rejected: int
    invalid: int
    partitions: int
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
        """Rows the job judged invalid; expects the columns `invalid`, `insert_id` and `line`."""
        invalid_events.select(
            F.lit("validation").alias("stage"),
            F.col("invalid.field").alias("field"),
            F.col("invalid.message").alias("message"),
            F.col("insert_id"),
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


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write one small file through Hadoop's FileSystem, which knows every scheme Spark is set up for."""
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path if urlparse(path).scheme else os.path.abspath(path))
    filesystem = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    filesystem.setWriteChecksum(False)  # no .crc beside the file on local disks
    stream = filesystem.create(hadoop_path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()
