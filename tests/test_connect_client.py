"""Which failures of a Spark Connect call the job gives up on in seconds (mp_spark/connect_client.py)."""

import logging

import pytest

grpc = pytest.importorskip("grpc")

from mp_spark.connect_client import UnreachableServer  # noqa: E402  (needs grpc)


class RpcError(grpc.RpcError):
    """A failed call as gRPC raises it: a status code and its details."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
REFUSED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:15002: "
           "Failed to connect to remote host: Connection refused")


@pytest.mark.parametrize("details", [
    REFUSED,
    "DNS resolution failed for nosuch.invalid:15002: C-ares status is not ARES_SUCCESS",  # older gRPC
    "errors resolving nosuch.invalid:15002: [field:hostname lookup error: Domain name not found]",
])
def test_a_refused_connection_or_an_unknown_host_is_retried_by_the_short_policy(details: str) -> None:
    assert UnreachableServer("h:15002").can_retry(RpcError(UNAVAILABLE, details))


@pytest.mark.parametrize("error", [
    RpcError(UNAVAILABLE, "Socket closed"),  # a server that answered: Spark's own ten minutes
    RpcError(grpc.StatusCode.INTERNAL, "Connection refused by the data source"),
    ConnectionRefusedError(111, "Connection refused"),  # not a gRPC call's failure
])
def test_other_failures_are_left_to_sparks_own_retries(error: BaseException) -> None:
    assert not UnreachableServer("h:15002").can_retry(error)


def test_the_short_policy_gives_up_within_seconds_and_says_once_what_it_waits_for(
        caplog: pytest.LogCaptureFixture) -> None:
    policy = UnreachableServer("h:15002")
    state = policy.to_state()
    waits_ms = []
    while (wait := state.next_attempt()) is not None:
        waits_ms.append(wait)
    assert 5_000 < sum(waits_ms) < 20_000  # time for a server that is starting, not ten minutes

    with caplog.at_level(logging.WARNING, logger="mp_spark.connect_client"):
        for _ in range(3):
            policy.can_retry(RpcError(UNAVAILABLE, REFUSED))
    assert [r.getMessage() for r in caplog.records] == [
        "the Spark Connect server at h:15002 does not answer (the connection was refused); trying again for about 15 s"]
