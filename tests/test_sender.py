"""The sender alone: a scripted transport, no Spark, no network, no real sleeping."""

import dataclasses
import gzip
import json
import random
import threading
import time
from collections.abc import Mapping

import pytest

from mp_spark.batching import Batch, batches_from_chunks, chunk_of_lines
from mp_spark.config import MixpanelConfig
from mp_spark.endpoints import Import, LookupTable, Profiles
from mp_spark.sender import BatchSender, SenderSettings, SendStopped
from mp_spark.tally import EXHAUSTED, FATAL, Rejection, Tally
from mp_spark.transport import Response, TransportError

SETTINGS = SenderSettings.for_tasks(MixpanelConfig(max_batch_events=3, max_attempts=4, pacing=False, max_in_flight=1))
IMPORT = Import("https://mp.test/import?strict=1&project_id=7", "Basic eDp5")


class ScriptedTransport:
    """Answers from a script (a Response, or an exception to raise); records every request body."""

    def __init__(self, *answers: Response | Exception) -> None:
        self.answers = list(answers)
        self.bodies: list[list[dict]] = []
        self.headers: list[Mapping[str, str]] = []

    def send(self, method: str, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
             ) -> Response:
        self.bodies.append([json.loads(line) for line in gzip.decompress(body).splitlines()])
        self.headers.append(headers)
        answer = self.answers.pop(0) if self.answers else ok()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        pass


def ok() -> Response:
    return Response(200, b'{"code":200,"num_records_imported":1,"status":"OK"}')


def status(code: int, payload: dict | None = None, headers: dict | None = None) -> Response:
    return Response(code, json.dumps(payload or {"code": code, "error": "nope"}).encode(), headers or {})


def lines(n: int) -> list[str]:
    return [json.dumps({"event": "e", "properties": {"$insert_id": f"id-{i}", "n": i}}) for i in range(n)]


def send(sender: BatchSender, n: int, max_events: int = 3) -> tuple[Tally, list[Rejection]]:
    """Send n events; the tally and every rejection the sender yielded."""
    chunks = [chunk_of_lines(lines(n))]
    rejections = [r for found in sender.send(batches_from_chunks(chunks, max_events=max_events, max_bytes=1_000_000))
                  for r in found]
    return sender.tally, rejections


def make_sender(transport: ScriptedTransport, waits: list[float]) -> BatchSender:
    return BatchSender(IMPORT, SETTINGS, transport, sleep=waits.append, rng=random.Random(1))


def test_send_batches_batches_gzips_and_counts_imports() -> None:
    transport, waits = ScriptedTransport(), []
    tally, _ = send(make_sender(transport, waits), 7)
    assert [len(b) for b in transport.bodies] == [3, 3, 1]
    assert (tally.rows, tally.imported, tally.rejected, tally.batches, tally.retries) == (7, 7, 0, 3, 0)
    assert transport.headers[0]["Content-Encoding"] == "gzip"
    assert transport.headers[0]["Content-Type"] == "application/x-ndjson"
    assert transport.headers[0]["Authorization"] == "Basic eDp5"
    assert tally.gzip_bytes > 0 and tally.raw_bytes > tally.gzip_bytes // 2
    assert waits == []


@pytest.mark.parametrize("answer", [status(429), status(500), status(502), status(503), status(504),
                                    status(408), TransportError("ConnectionError")])
def test_send_batch_resends_identical_body_after_retryable_failure(answer: Response | Exception) -> None:
    transport, waits = ScriptedTransport(answer, answer, ok()), []
    tally, _ = send(make_sender(transport, waits), 2)
    assert tally.imported == 2 and tally.retries == 2 and tally.requests == 3
    assert transport.bodies[0] == transport.bodies[1] == transport.bodies[2]
    assert len(waits) == 2


def test_a_certificate_that_does_not_verify_is_not_retried() -> None:
    refused = TransportError("SSLError: the server's certificate did not verify", retryable=False)
    transport, waits = ScriptedTransport(refused), []
    with pytest.raises(SendStopped, match="did not verify") as stopped:
        send(make_sender(transport, waits), 2)
    assert stopped.value.status == FATAL and len(transport.bodies) == 1 and waits == []


def test_backoff_doubles_from_two_seconds_with_one_to_five_seconds_of_jitter() -> None:
    sender = BatchSender(IMPORT, SenderSettings.for_tasks(MixpanelConfig()), ScriptedTransport(),
                         rng=random.Random(3))
    for attempt, base in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (9, 60)]:
        wait = sender.backoff_s(attempt)
        assert base + 1 <= wait <= base + 5, (attempt, wait)


def test_send_batch_honours_retry_after(caplog: pytest.LogCaptureFixture) -> None:
    transport, waits = ScriptedTransport(status(429, headers={"Retry-After": "7"}), ok()), []
    send(make_sender(transport, waits), 1)
    assert waits == [7.0]
    now = ScriptedTransport(status(429, headers={"Retry-After": "0"}), ok())
    send(make_sender(now, waits), 1)  # no pacing here: a wait of 0 s is Mixpanel's, said as such
    assert caplog.records[-1].getMessage() == "/import attempt 1 failed (HTTP 429); retrying in 0.0 s"


def test_send_batch_gives_up_after_max_attempts() -> None:
    transport, waits = ScriptedTransport(*[status(503)] * 10), []
    sender = make_sender(transport, waits)
    with pytest.raises(SendStopped, match=r"4 attempts.*HTTP 503") as stopped:
        send(sender, 1)
    assert stopped.value.status == EXHAUSTED
    assert len(transport.bodies) == 4 and len(waits) == 3
    assert (sender.tally.requests, sender.tally.retries, sender.tally.imported) == (4, 3, 0)


def test_no_answer_names_the_host_and_the_cause() -> None:
    refused = TransportError("ConnectionError: the connection was refused")
    endpoint = Import("https://user:pw@mp.test:8443/import?strict=1", "Basic eDp5")  # no user:pw in messages
    sender = BatchSender(endpoint, SETTINGS, ScriptedTransport(*[refused] * 4), sleep=lambda _: None)
    with pytest.raises(SendStopped) as stopped:
        send(sender, 1)
    assert stopped.value.message == ("/import: gave up after 4 attempts; last: no answer from mp.test:8443 "
                                     "(ConnectionError: the connection was refused)")
    once = BatchSender(endpoint, dataclasses.replace(SETTINGS, max_attempts=1), ScriptedTransport(refused))
    with pytest.raises(SendStopped, match="gave up after 1 attempt; "):
        send(once, 1)


@pytest.mark.parametrize("key", ["insert_id", "$insert_id"])
def test_strict_400_rejects_only_the_failed_records(key: str) -> None:
    failed = {"code": 400, "error": "some data points in the request failed validation", "status": "Bad Request",
              "num_records_imported": 2,
              "failed_records": [{"index": 1, key: "id-1", "field": "properties.time",
                                  "message": "'properties.time' is invalid"}]}
    transport, waits = ScriptedTransport(status(400, failed)), []
    tally, rejections = send(make_sender(transport, waits), 3)
    assert (tally.imported, tally.rejected, tally.retries) == (2, 1, 0)
    [rejection] = rejections
    assert rejection.insert_id == "id-1" and rejection.field == "properties.time"
    assert json.loads(rejection.event)["properties"]["n"] == 1
    assert len(transport.bodies) == 1  # never retried


def test_400_without_failed_records_rejects_the_whole_batch() -> None:
    transport, waits = ScriptedTransport(status(400, {"code": 400, "error": "invalid JSON"})), []
    tally, rejections = send(make_sender(transport, waits), 2)
    assert (tally.imported, tally.rejected) == (0, 2)
    assert {r.message for r in rejections} == {"invalid JSON"}
    assert [r.insert_id for r in rejections] == ["id-0", "id-1"]  # read from the lines


@pytest.mark.parametrize("unmatched", [{"index": 7}, {"index": 2, "insert_id": "id-1"}])  # out of the batch; not it
def test_400_whose_failed_records_do_not_match_rejects_the_whole_batch(unmatched: dict) -> None:
    failed = {"code": 400, "error": "some data points in the request failed validation",
              "failed_records": [{"index": 0, "field": "f", "message": "m"},
                                 {**unmatched, "field": "f", "message": "m"}]}
    transport, waits = ScriptedTransport(status(400, failed)), []
    tally, rejections = send(make_sender(transport, waits), 3)
    assert (tally.imported, tally.rejected) == (0, 3)
    assert "could not be matched" in rejections[0].message


def test_413_splits_the_batch_and_sends_the_halves() -> None:
    transport, waits = ScriptedTransport(status(413), ok(), ok()), []
    tally, _ = send(make_sender(transport, waits), 3)
    assert [len(b) for b in transport.bodies] == [3, 1, 2]
    assert (tally.imported, tally.batches, tally.retries) == (3, 2, 0)


def test_413_on_a_single_event_rejects_it() -> None:
    transport, waits = ScriptedTransport(status(413)), []
    tally, rejections = send(make_sender(transport, waits), 1)
    assert (tally.imported, tally.rejected) == (0, 1)
    assert "413" in rejections[0].message


@pytest.mark.parametrize("code", [401, 403])
def test_auth_failure_stops_at_once_and_names_the_causes(code: int) -> None:
    transport, waits = ScriptedTransport(status(code, {"error": "Invalid credentials"})), []
    with pytest.raises(SendStopped, match=r"project_id.*region") as raised:
        send(make_sender(transport, waits), 5)
    assert raised.value.status == FATAL
    assert len(transport.bodies) == 1 and waits == []
    assert "eDp5" not in str(raised.value)


def test_unexpected_status_is_fatal() -> None:
    transport, waits = ScriptedTransport(status(404, {"error": "no such path"})), []
    with pytest.raises(SendStopped, match=r"HTTP 404 from /import.*no such path"):
        send(make_sender(transport, waits), 1)


def test_endpoints_keep_their_secrets_out_of_repr() -> None:
    assert "eDp5" not in repr(IMPORT)
    assert "tk-secret" not in repr(Profiles("https://mp.test/engage", "tk-secret"))


class SlowTransport:
    """Takes 20 ms per request on real threads and records how many requests overlapped."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.lock = threading.Lock()
        self.current = self.peak = self.calls = 0
        self.fail_on = fail_on

    def send(self, method: str, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
             ) -> Response:
        with self.lock:
            self.current += 1
            self.calls += 1
            self.peak = max(self.peak, self.current)
            call = self.calls
        time.sleep(0.02)
        with self.lock:
            self.current -= 1
        return status(401) if call == self.fail_on else ok()

    def close(self) -> None:
        pass


def test_send_batches_keeps_up_to_in_flight_requests_going() -> None:
    transport = SlowTransport()
    settings = dataclasses.replace(SETTINGS, in_flight=4)
    tally, _ = send(BatchSender(IMPORT, settings, transport), 60)
    assert tally.imported == 60 and tally.batches == 20
    assert transport.peak == 4


def test_send_batches_with_one_in_flight_sends_one_at_a_time() -> None:
    transport = SlowTransport()
    send(BatchSender(IMPORT, SETTINGS, transport), 15)
    assert transport.peak == 1


def test_a_failing_batch_stops_the_whole_partition_with_its_own_reason() -> None:
    transport = SlowTransport(fail_on=3)
    with pytest.raises(SendStopped, match="401") as stopped:  # not a sibling's "cancelled"
        send(BatchSender(IMPORT, dataclasses.replace(SETTINGS, in_flight=4), transport), 300)
    assert stopped.value.status == FATAL
    assert transport.calls < 100  # stopped early, not after sending everything


def test_for_tasks_splits_the_job_budgets_between_concurrent_tasks() -> None:
    capped = SenderSettings.for_tasks(MixpanelConfig(max_events_per_second=15_000), 3, "r1")
    assert (capped.run_id, capped.in_flight, capped.max_events_per_second, capped.rate_share) == ("r1", 5, 5000, 5000)
    many = SenderSettings.for_tasks(MixpanelConfig(rate_limit_events_per_second=60_000), 40, "r1")
    assert (many.in_flight, many.max_events_per_second, many.rate_share) == (1, None, 1500)


def test_with_pacing_a_batch_s_first_429_waits_only_for_the_pacer_and_a_second_backs_off(
        caplog: pytest.LogCaptureFixture) -> None:
    transport, waits = ScriptedTransport(status(429), status(429), ok()), []
    paced = dataclasses.replace(SETTINGS, pacing=True, rate_share=1e9)  # too fast for the pacer itself to wait
    sender = BatchSender(IMPORT, paced, transport, sleep=waits.append, rng=random.Random(1))
    tally, _ = send(sender, 1)
    assert tally.imported == 1 and tally.retries == 2
    assert waits[0] == 0.0  # the pacer, cut by the 429, spaces the retry
    assert waits[1] >= 4 + 1  # attempt 2: 4 s doubling backoff plus at least 1 s of jitter
    # what a user reads: the first retry is not "in 0.0 s", as if Mixpanel's advice to back off were ignored
    assert [r.getMessage() for r in caplog.records] == [
        "/import attempt 1 failed (HTTP 429); retrying at this task's slowed pace",
        f"/import attempt 2 failed (HTTP 429); retrying in {waits[1]:.1f} s"]


class UpdatesTransport:
    """/engage as Mixpanel answers it: 200 either way, {"status": 0} when any update in the batch is bad."""

    def __init__(self) -> None:
        self.batches: list[list[dict]] = []

    def send(self, method: str, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float
             ) -> Response:
        updates = json.loads(body)  # a JSON array, not gzip
        self.batches.append(updates)
        bad = [u for u in updates if u["$set"].get("bad")]
        if bad:
            return Response(200, json.dumps({"error": "property 'bad' is not allowed", "status": 0}).encode())
        return Response(200, b'{"error": null, "status": 1}')

    def close(self) -> None:
        pass


def test_refused_profile_updates_are_isolated_by_halving_and_carry_the_token_only_on_the_wire() -> None:
    settings = SenderSettings.for_tasks(MixpanelConfig(max_attempts=2, pacing=False, max_batch_events=8))
    endpoint = Profiles("https://mp.test/engage?verbose=1&ip=0", "tk")
    assert "Authorization" not in endpoint.headers()
    transport = UpdatesTransport()
    updates = [json.dumps({"$distinct_id": f"u{i}", "$set": {"bad": i in (2, 5)}}) for i in range(8)]
    sender = BatchSender(endpoint, settings, transport, sleep=lambda s: None)
    rejections = [r for found in sender.send(batches_from_chunks([chunk_of_lines(updates)], max_events=8,
                                                                 max_bytes=1_000_000)) for r in found]

    tally = sender.tally
    assert (tally.rows, tally.imported, tally.rejected) == (8, 6, 2)
    assert sorted(json.loads(r.event)["$distinct_id"] for r in rejections) == ["u2", "u5"]
    assert all(r.message == "property 'bad' is not allowed" and "tk" not in r.event for r in rejections)
    assert all(u["$token"] == "tk" for batch in transport.batches for u in batch)
    assert len(transport.batches[0]) == 8 and len(transport.batches) > 3  # halved down to the refused ones


def test_profile_updates_answered_413_are_halved_until_one_alone_is_refused() -> None:
    settings = SenderSettings.for_tasks(MixpanelConfig(max_attempts=2, pacing=False, max_batch_events=4))
    updates = [json.dumps({"$distinct_id": f"u{i}", "$set": {"big": "x" * (900 if i == 3 else 1)}}) for i in range(4)]
    sizes = []

    def answer(method: str, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Response:
        sizes.append(len(json.loads(body)))
        return Response(413, b"") if len(body) > 800 else Response(200, Profiles.accepted)

    transport = UpdatesTransport()
    transport.send = answer
    sender = BatchSender(Profiles("https://mp.test/engage?verbose=1", "tk"), settings, transport, sleep=lambda s: None)
    rejections = [r for found in sender.send(batches_from_chunks([chunk_of_lines(updates)], max_events=4,
                                                                 max_bytes=1_000_000)) for r in found]
    assert (sender.tally.imported, sender.tally.rejected) == (3, 1)
    assert [json.loads(r.event)["$distinct_id"] for r in rejections] == ["u3"]
    assert rejections[0].message == "update alone exceeds Mixpanel's request size limit (413)"
    assert sizes == [4, 2, 2, 1, 1]


def test_a_lookup_table_mixpanel_refuses_is_rejected_whole_for_the_reason_it_gives() -> None:
    table = Batch(b'id,name\n1,"two\nlines"\n2,b\n', 2)  # CSV rows may hold newlines: counted, not split
    transport = ScriptedTransport(status(400, {"error": "bad header"}))
    transport.send = lambda *args: status(400, {"error": "bad header"})  # a CSV body, not ndjson
    sender = BatchSender(LookupTable("https://mp.test/lookup-tables/t", "Basic eDp5"), SETTINGS, transport)
    [rejections] = list(sender.send([table]))
    assert (sender.tally.rows, sender.tally.rejected, sender.tally.imported) == (2, 2, 0)
    assert [r.message for r in rejections] == ["Mixpanel refused the whole table: bad header"]
