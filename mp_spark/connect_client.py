"""How the job's Spark Connect client treats a server that nothing answers for.

Spark's client retries a failed call for at least ten minutes, silently, which suits a server that
is briefly unavailable behind a gateway. A refused connection or a host name that does not resolve
means nothing listens at that address (a wrong `--remote` or SPARK_REMOTE, or a server that has
stopped): the job says so, retries those for about 15 s (time for a server that is starting up to
listen), then gives up. Other errors keep Spark's own retries.
"""

from __future__ import annotations

import logging

import grpc
from pyspark.sql import SparkSession
from pyspark.sql.connect.client.retries import RetryPolicy

log = logging.getLogger(__name__)

# What gRPC's error details say (the words vary with its version) -> how the job puts it
UNREACHABLE = {"Connection refused": "the connection was refused",
               "DNS resolution failed": "its host name does not resolve",
               "errors resolving": "its host name does not resolve"}


class UnreachableServer(RetryPolicy):
    """7 retries, 0.2, 0.4, 0.8, 1.6, 3.2, 4 and 4 s apart: about 15 s in all."""

    def __init__(self, address: str) -> None:
        super().__init__(max_retries=7, initial_backoff=200, backoff_multiplier=2.0, max_backoff=4000)
        self._address = address
        self._warned = False

    def can_retry(self, exception: BaseException) -> bool:
        reason = unreachable_reason(exception.details()) if isinstance(exception, grpc.RpcError) and \
            exception.code() == grpc.StatusCode.UNAVAILABLE else None
        if reason and not self._warned:
            self._warned = True
            log.warning("the Spark Connect server at %s does not answer (%s); trying again for about 15 s",
                        self._address, reason)
        return reason is not None


def unreachable_reason(text: str | None) -> str | None:
    """Why nothing answered, if the error's text says the server cannot be reached at all."""
    return next((reason for words, reason in UNREACHABLE.items() if words in (text or "")), None)


def fail_fast_when_unreachable(spark: SparkSession, address: str) -> None:
    """Put UnreachableServer before the client's own policies (the first that matches an error applies),
    once per client."""
    policies = spark.client.get_retry_policies()
    if not any(isinstance(policy, UnreachableServer) for policy in policies):
        spark.client.set_retry_policies([UnreachableServer(address), *policies])


def close(spark: SparkSession) -> None:
    """Close the session's channel, so that the client's clean-up at exit does not call (and wait on)
    a server that is gone."""
    try:
        spark.client.close()
    except Exception:  # closing is all that is left to do
        pass
