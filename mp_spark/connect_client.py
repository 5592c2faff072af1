"""How the job's Spark Connect client treats a server that nothing answers for.

Spark's client retries a failed call for at least ten minutes, silently, which suits a server that
is briefly unavailable behind a gateway. A refused connection or a host that does not resolve
means nothing listens at that address (a wrong `--remote` or SPARK_REMOTE, or a server that has
stopped): the job retries those for a few seconds only, then says so.
"""

from __future__ import annotations

import grpc
from pyspark.sql import SparkSession
from pyspark.sql.connect.client.retries import RetryPolicy

# gRPC's words for either (they vary with its version), and ours
UNREACHABLE = {"Connection refused": "the connection was refused",
               "DNS resolution failed": "its host name does not resolve",
               "errors resolving": "its host name does not resolve"}


class UnreachableServer(RetryPolicy):
    """About 6 s of retries (0.2, 0.4, 0.8, 1.6 and 3.2 s apart): time for a server that is still starting."""

    def __init__(self) -> None:
        super().__init__(max_retries=5, initial_backoff=200, backoff_multiplier=2.0, max_backoff=3200)

    def can_retry(self, exception: BaseException) -> bool:
        return (isinstance(exception, grpc.RpcError) and exception.code() == grpc.StatusCode.UNAVAILABLE
                and unreachable_reason(exception.details()) is not None)


def unreachable_reason(text: str | None) -> str | None:
    """Why nothing answered, if the error's text says the server cannot be reached at all."""
    return next((reason for words, reason in UNREACHABLE.items() if words in (text or "")), None)


def fail_fast_when_unreachable(spark: SparkSession) -> None:
    """Put UnreachableServer before the client's own policies (the first that matches an error applies)."""
    client = spark.client
    client.set_retry_policies([UnreachableServer(), *client.get_retry_policies()])


def close(spark: SparkSession) -> None:
    """Close the session's channel, so that the client's clean-up at exit does not call (and wait on)
    a server that is gone."""
    try:
        spark.client.close()
    except Exception:  # closing is all that is left to do
        pass
