"""The mapping's cost per event, warm (not part of the tests): `python benchmarks/mapping.py`.

Options: `--rows N` (default 200,000) and `--properties N [N ...]` (default 5 50).

For each number of properties it makes N rows whose properties are either columns of their own
(mapped by name, `mapping.include_columns`) or one JSON object, as text or as a VARIANT
(`mapping.spread`, as the presets read vendors' exports), and times the records the job sends
(`key`, `line`, `invalid`) written to Spark's noop sink: three times each on one local Spark
session, after one warm-up.
Prints the median, and microseconds of one core per row (the session runs on all cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from mp_spark.config import parse_config
from mp_spark.records import prepare_records
from mp_spark.session import local_builder

NOW_MS = 1_800_000_000_000


def source(spark: SparkSession, rows: int, properties: int) -> DataFrame:
    values = [F.concat(F.lit(f"value-{i}-"), (F.col("id") % 97).cast("string")).alias(f"prop_{i}")
              for i in range(properties)]
    return spark.range(rows).select(
        F.format_string("user-%05d", F.col("id") % 10_000).alias("user_id"),
        F.lit("Page View").alias("event_name"),
        F.timestamp_seconds(F.lit(1_717_200_000) + F.col("id")).alias("ts"),
        *values,
        F.to_json(F.struct(*values)).alias("props"),
    ).withColumn("props_variant", F.parse_json("props")).localCheckpoint()


def records(df: DataFrame, mapping: dict) -> DataFrame:
    base = {"event": "event_name", "time": "ts", "distinct_id": "user_id"}
    config = parse_config(json.dumps({"source": {"format": "parquet", "path": "unused"},
                                      "mapping": {**base, **mapping}}))
    return prepare_records(df, config, NOW_MS).select("key", "line", "invalid")


def seconds(df: DataFrame, runs: int = 3) -> float:
    df.write.format("noop").mode("overwrite").save()  # warm-up
    times = []
    for _ in range(runs):
        started = time.monotonic()
        df.write.format("noop").mode("overwrite").save()
        times.append(time.monotonic() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--properties", type=int, nargs="+", default=[5, 50])
    args = parser.parse_args()
    spark = local_builder(SparkSession.builder, with_delta=False).getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    cores = os.cpu_count() or 1
    print(f"{args.rows:,} rows, local Spark on {cores} cores; median of 3 warm runs")
    print("| properties | mapped as | seconds | core-µs per row |\n|---:|---|---:|---:|")
    for count in args.properties:
        df = source(spark, args.rows, count)
        columns = [f"prop_{i}" for i in range(count)]
        shapes = {"columns": {"include_columns": columns}, "spread of JSON text": {"spread": ["props"]},
                  "spread of a VARIANT": {"spread": ["props_variant"]}}
        for shape, mapping in shapes.items():
            took = seconds(records(df, mapping))
            print(f"| {count} | {shape} | {took:.2f} | {took * cores / args.rows * 1e6:.1f} |", flush=True)


if __name__ == "__main__":
    main()
