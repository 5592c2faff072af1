"""mp-spark: backfill events from a data lake into Mixpanel's /import API with Spark."""

__version__ = "0.1.0"
# How the job's log lines look, on the driver (mp_spark.cli) and in the executors' logs (mp_spark.executor).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


PLURALS = {"batch": "batches", "micro-batch": "micro-batches", "retry": "retries"}


def counted(count: int, noun: str) -> str:
    """"1 partition", "2 partitions", "0 retries": a count for the job's log lines and messages."""
    return f"{count:,} {noun if count == 1 else PLURALS.get(noun, noun + 's')}"
