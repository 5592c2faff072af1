"""Small files anywhere Spark can reach (local, s3://, dbfs:/, abfss://, gs://), through Hadoop's FileSystem.

The driver uses these for the config file, the run's manifest and its ledger of finished partitions;
bulk results go through Spark's own DataFrame writers.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from pyspark.sql import SparkSession


def is_local(path: str) -> bool:
    """A plain path, read before Spark starts; anything with a scheme (file:// too) is read through Spark."""
    return urlparse(path).scheme == ""


def read_text(spark: SparkSession, path: str) -> str:
    """The whole file as UTF-8 text; OSError when it is missing or unreadable."""
    jvm = spark.sparkContext._jvm
    hadoop_path, filesystem = _resolve(spark, path)
    try:
        stream = filesystem.open(hadoop_path)
    except Exception as exc:  # py4j wraps Hadoop's FileNotFoundException and friends
        raise OSError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    try:
        return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def write_text(spark: SparkSession, path: str, text: str) -> None:
    """Write (or replace) one small file."""
    hadoop_path, filesystem = _resolve(spark, path)
    filesystem.setWriteChecksum(False)  # no .crc beside the file on local disks
    stream = filesystem.create(hadoop_path, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def list_names(spark: SparkSession, directory: str) -> list[str]:
    """Names of the files in `directory`, sorted; empty when it does not exist."""
    hadoop_path, filesystem = _resolve(spark, directory)
    if not filesystem.exists(hadoop_path):
        return []
    return sorted(status.getPath().getName() for status in filesystem.listStatus(hadoop_path))


def delete(spark: SparkSession, path: str) -> None:
    """Remove a file or a directory and all it holds; nothing to do when it does not exist."""
    hadoop_path, filesystem = _resolve(spark, path)
    filesystem.delete(hadoop_path, True)


def _resolve(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path if urlparse(path).scheme else os.path.abspath(path))
    return hadoop_path, hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
