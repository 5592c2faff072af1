"""Tests for the fake Mixpanel /import server, driven over loopback HTTP with requests."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.fake_mixpanel import MAX_EVENT_BYTES, FakeMixpanel, Faults

SA = ("sa-user", "sa-secret")
NOW_S = int(time.time())
NOW_MS = NOW_S * 1000


@pytest.fixture(scope="module")
def server() -> Iterator[FakeMixpanel]:
    with FakeMixpanel() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeMixpanel) -> FakeMixpanel:
    """The shared server, cleared and without faults for each test."""
    server.set_faults(Faults())
    server.reset()
    return server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def make_event(n: int = 0, **props: Any) -> dict[str, Any]:
    base = {"time": NOW_MS - 60_000, "distinct_id": f"user-{n}", "$insert_id": f"id-{n}"}
    return {"event": "Signup", "properties": {**base, **props}}


def post(
    fake: FakeMixpanel,
    events: list[Any],
    *,
    session: requests.Session | None = None,
    auth: tuple[str, str] = SA,
    params: dict[str, str] | None = None,
    ndjson: bool = True,
    gzipped: bool = True,
    timeout: float = 5,
) -> requests.Response:
    if ndjson:
        raw = "\n".join(json.dumps(e) for e in events).encode()
        ctype = "application/x-ndjson"
    else:
        raw, ctype = json.dumps(events).encode(), "application/json"
    headers = {"Content-Type": ctype}
    if gzipped:
        raw, headers["Content-Encoding"] = gzip.compress(raw), "gzip"
    query = {"strict": "1", "project_id": "12345"} if params is None else params
    return (session or requests).post(
        f"{fake.url}/import", params=query, data=raw, headers=headers, auth=auth, timeout=timeout
    )


# ---- happy path and dedup ------------------------------------------------------------------------------


def test_import_gzip_ndjson_returns_200(fake: FakeMixpanel) -> None:
    resp = post(fake, [make_event(i) for i in range(3)])
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"code": 200, "num_records_imported": 3, "status": "OK"}
    assert (fake.raw_arrivals, len(fake.unique_events), fake.max_events_per_request) == (3, 3, 3)
    assert fake.all_gzip and fake.statuses[200] == 1


def test_import_json_array_without_gzip_returns_200(fake: FakeMixpanel) -> None:
    resp = post(fake, [make_event(1), make_event(2)], ndjson=False, gzipped=False)
    assert resp.json()["num_records_imported"] == 2
    assert not fake.all_gzip


def test_import_dedups_on_key_and_keeps_latest_copy(fake: FakeMixpanel) -> None:
    post(fake, [make_event(1, plan="free")])
    post(fake, [make_event(1, plan="paid")])
    assert fake.raw_arrivals == 2
    assert list(fake.unique_events) == [("Signup", "user-1", NOW_MS - 60_000, "id-1")]
    assert next(iter(fake.unique_events.values()))["properties"]["plan"] == "paid"


def test_import_seconds_and_ms_are_both_accepted_and_share_a_key(fake: FakeMixpanel) -> None:
    resp = post(fake, [make_event(1, time=NOW_S - 60), make_event(1, time=NOW_MS - 60_000)])
    assert resp.status_code == 200
    assert (fake.raw_arrivals, len(fake.unique_events)) == (2, 1)


def test_session_reuses_keep_alive_connection(fake: FakeMixpanel, session: requests.Session) -> None:
    for i in range(3):
        post(fake, [make_event(i)], session=session)
    post(fake, [make_event(9)], session=session, params={"strict": "0", "project_id": "12345"})  # early 400
    post(fake, [make_event(10)], session=session)
    assert fake.requests == 5 and fake.connections == 1


# ---- validation (strict=1) ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["insert_id", "$insert_id"])
def test_partial_400_imports_valid_events_and_reports_failures(key: str) -> None:
    with FakeMixpanel(insert_id_key=key) as fake:
        events = [make_event(0), {"event": "", "properties": make_event(1)["properties"]}, make_event(2)]
        resp = post(fake, events)
    body = resp.json()
    assert resp.status_code == 400
    assert body["error"] == "some data points in the request failed validation"
    assert body["num_records_imported"] == 2
    assert body["failed_records"] == [
        {"index": 1, key: "id-1", "field": "event", "message": "'event' must not be missing or blank"}
    ]
    assert fake.raw_arrivals == 2
    assert fake.rejected[0]["event"] == events[1]


@pytest.mark.parametrize(
    "distinct_id", ["anon", "Null", "LMY47D", "00000000-0000-0000-0000-000000000000", 0, -1]
)
def test_placeholder_distinct_id_is_rejected(fake: FakeMixpanel, distinct_id: object) -> None:
    resp = post(fake, [make_event(1, distinct_id=distinct_id)])
    assert resp.status_code == 400
    assert resp.json()["failed_records"][0]["field"] == "properties.distinct_id"
    assert fake.raw_arrivals == 0


def test_empty_distinct_id_is_accepted(fake: FakeMixpanel) -> None:
    assert post(fake, [make_event(1, distinct_id="")]).status_code == 200
    assert ("Signup", "", NOW_MS - 60_000, "id-1") in fake.unique_events


@pytest.mark.parametrize(
    "time_value",
    [
        31_535_999,  # 1970-12-31T23:59:59Z in seconds
        31_535_999_000,  # the same in ms reads as seconds (< 1e11): far future
        NOW_MS + 2 * 3600 * 1000,  # 2 h ahead
        NOW_S + 2 * 3600,
        float(NOW_S),  # not an integer
        str(NOW_MS),
    ],
)
def test_bad_time_is_rejected(fake: FakeMixpanel, time_value: object) -> None:
    resp = post(fake, [make_event(1, time=time_value)])
    assert resp.json()["failed_records"][0]["field"] == "properties.time"


def test_time_before_limits_is_accepted(fake: FakeMixpanel) -> None:
    events = [make_event(1, time=31_536_000), make_event(2, time=NOW_MS + 30 * 60 * 1000)]
    assert post(fake, events).status_code == 200


@pytest.mark.parametrize("insert_id", [None, "", "x" * 37, "has space", "under_score", "null"])
def test_bad_insert_id_is_rejected(fake: FakeMixpanel, insert_id: object) -> None:
    event = make_event(1)
    event["properties"]["$insert_id"] = insert_id
    record = post(fake, [event]).json()["failed_records"][0]
    assert (record["field"], record["insert_id"]) == ("properties.$insert_id", insert_id)


def test_insert_id_of_36_chars_is_accepted(fake: FakeMixpanel) -> None:
    assert post(fake, [make_event(1, **{"$insert_id": "a1-" * 12})]).status_code == 200


def test_property_count_depth_and_size_limits(fake: FakeMixpanel) -> None:
    many = {f"p{i}": i for i in range(252)}  # + time, distinct_id, $insert_id = 255
    events = [
        make_event(0, **{f"p{i}": i for i in range(251)}),  # 254 properties: ok
        make_event(1, **many),
        make_event(2, deep={"a": [{"c": 1}]}),  # dict > list > dict = depth 3: ok
        make_event(3, deep={"a": [{"c": [1]}]}),  # depth 4
        make_event(4, blob="x" * MAX_EVENT_BYTES),
    ]
    body = post(fake, events).json()
    assert body["num_records_imported"] == 2
    assert [(r["index"], r["field"]) for r in body["failed_records"]] == [
        (1, "properties"),
        (3, "properties.deep"),
        (4, "properties"),
    ]


def test_invalid_utf8_fails_only_that_event(fake: FakeMixpanel) -> None:
    raw = gzip.compress(b'{"event":"a","properties":{"time":%d,"$insert_id":"i1","x":"\xff"}}\n' % NOW_MS)
    raw_ok = json.dumps(make_event(2)).encode()
    body = gzip.compress(gzip.decompress(raw) + raw_ok)
    resp = requests.post(
        f"{fake.url}/import?strict=1&project_id=12345",
        data=body,
        auth=SA,
        headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
        timeout=5,
    )
    assert (
        resp.json()["failed_records"][0]["message"] == "properties.x is invalid: string should be valid utf8"
    )
    assert fake.raw_arrivals == 1


# ---- whole-request errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "params"),
    [
        (("sa-user", "wrong"), {"strict": "1", "project_id": "12345"}),
        (SA, {"strict": "1"}),  # service account without project_id
        (SA, {"strict": "1", "project_id": "999"}),
        (("tok-123", ""), {"strict": "1", "project_id": "999"}),
        (("tok-123", "x"), {"strict": "1"}),
    ],
)
def test_bad_credentials_return_401(
    fake: FakeMixpanel, auth: tuple[str, str], params: dict[str, str]
) -> None:
    resp = post(fake, [make_event(1)], auth=auth, params=params)
    assert resp.status_code == 401
    assert resp.json() == {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}
    assert fake.raw_arrivals == 0


def test_malformed_basic_header_returns_401(fake: FakeMixpanel) -> None:
    resp = requests.post(
        f"{fake.url}/import?strict=1",
        data=b"[]",
        # base64("tok-123"): the token without the ":" that an empty password needs
        headers={"Authorization": "Basic dG9rLTEyMw==", "Content-Type": "application/json"},
        timeout=5,
    )
    assert resp.status_code == 401


def test_project_token_auth_works_with_and_without_project_id(fake: FakeMixpanel) -> None:
    assert post(fake, [make_event(1)], auth=("tok-123", ""), params={"strict": "1"}).status_code == 200
    params = {"strict": "1", "project_id": "12345"}
    assert post(fake, [make_event(2)], auth=("tok-123", ""), params=params).status_code == 200


def test_missing_strict_returns_400(fake: FakeMixpanel) -> None:
    resp = post(fake, [make_event(1)], params={"project_id": "12345"})
    assert resp.status_code == 400 and "strict=1" in resp.json()["error"]


def test_body_over_limit_returns_413_even_when_gzip_makes_it_small() -> None:
    with FakeMixpanel(max_body_bytes=2_000) as fake:
        events = [make_event(i, pad="x" * 100) for i in range(20)]
        resp = post(fake, events)
        assert len(gzip.compress(json.dumps(events).encode())) < 2_000
        assert resp.status_code == 413
        assert resp.json() == {
            "code": 413,
            "error": "request exceeds max limit of 2000 bytes",
            "status": "Request Entity Too Large",
        }
        assert fake.raw_arrivals == 0


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        (b"not gzip", {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}),
        (b'{"event": "a"', {"Content-Type": "application/x-ndjson"}),
        (b'{"event": "a"}', {"Content-Type": "application/json"}),  # not an array
        (b'[{"event": "a", "properties": {"x": NaN}}]', {"Content-Type": "application/json"}),
        (b"[]", {"Content-Type": "text/plain"}),
    ],
)
def test_unparseable_body_returns_400(fake: FakeMixpanel, data: bytes, headers: dict[str, str]) -> None:
    resp = requests.post(
        f"{fake.url}/import?strict=1&project_id=12345", data=data, headers=headers, auth=SA, timeout=5
    )
    body = resp.json()
    assert resp.status_code == 400
    assert (body["status"], body["num_records_imported"], body["failed_records"]) == ("Bad Request", 0, [])


def test_too_many_events_returns_400_and_imports_nothing() -> None:
    with FakeMixpanel(max_events=5) as fake:
        resp = post(fake, [make_event(i) for i in range(6)])
        assert resp.status_code == 400 and "max limit of 5 events" in resp.json()["error"]
        assert fake.raw_arrivals == 0


def test_unknown_path_returns_404_json(fake: FakeMixpanel) -> None:
    resp = requests.post(f"{fake.url}/track", data=b"x", timeout=5)
    assert resp.status_code == 404 and resp.json()["code"] == 404


# ---- faults --------------------------------------------------------------------------------------------


def test_rate_429_answers_429_with_retry_after_and_stores_nothing(fake: FakeMixpanel) -> None:
    fake.set_faults(Faults(rate_429=1.0, retry_after_s=2))
    responses = [post(fake, [make_event(i)]) for i in range(3)]
    assert [r.status_code for r in responses] == [429, 429, 429]
    assert responses[0].json()["status"] == "Too Many Requests"
    assert responses[0].headers["Retry-After"] == "2"
    assert fake.raw_arrivals == 0 and not fake.unique_events


def test_rate_5xx_answers_5xx_and_stores_nothing(fake: FakeMixpanel) -> None:
    fake.set_faults(Faults(rate_5xx=1.0, seed=3))
    statuses = {post(fake, [make_event(i)]).status_code for i in range(10)}
    assert statuses <= {500, 502, 503} and len(statuses) > 1
    assert fake.raw_arrivals == 0


def test_5xx_after_import_stores_then_answers_503(fake: FakeMixpanel) -> None:
    fake.set_faults(Faults(rate_5xx_after_import=1.0))
    assert post(fake, [make_event(1)]).status_code == 503
    fake.set_faults(Faults())
    assert post(fake, [make_event(1)]).status_code == 200  # the client's resend
    assert (fake.raw_arrivals, len(fake.unique_events)) == (2, 1)
    assert fake.injected["5xx_after_import"] == 1


def test_drop_closes_connection_without_response(fake: FakeMixpanel, session: requests.Session) -> None:
    fake.set_faults(Faults(rate_drop=1.0))
    with pytest.raises(requests.ConnectionError):
        post(fake, [make_event(1)], session=session)
    fake.set_faults(Faults())
    assert post(fake, [make_event(1)], session=session).status_code == 200  # session recovers
    assert fake.statuses["drop"] == 1 and fake.raw_arrivals == 1


def test_latency_lets_requests_overlap(fake: FakeMixpanel) -> None:
    fake.set_faults(Faults(latency_s=0.3))
    codes: list[int] = []

    def send(i: int) -> None:
        codes.append(post(fake, [make_event(i)]).status_code)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200, 200, 200]
    assert fake.max_concurrent >= 2
    assert time.monotonic() - started < 0.9  # handled in parallel, not one after another


def test_admission_limit_answers_429_when_burst_exceeds_bucket() -> None:
    with FakeMixpanel(admit_events_per_second=100, faults=Faults(retry_after_s=1)) as fake:
        assert post(fake, [make_event(i) for i in range(80)]).status_code == 200
        resp = post(fake, [make_event(i) for i in range(80, 160)])
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "1"
        assert fake.admission_429s == 1 and fake.raw_arrivals == 80
        time.sleep(0.7)  # refills ~70 tokens: 20 left + 70 >= 80
        assert post(fake, [make_event(i) for i in range(80, 160)]).status_code == 200


def test_stop_closes_idle_keep_alive_connections(session: requests.Session) -> None:
    fake = FakeMixpanel().start()
    url = fake.url
    assert post(fake, [make_event(1)], session=session).status_code == 200
    fake.stop()
    with pytest.raises(requests.ConnectionError):  # the idle pooled connection must not still be served
        session.post(f"{url}/import?strict=1", data=b"[]", auth=SA, timeout=5)


def test_chunked_request_body_is_read(fake: FakeMixpanel) -> None:
    lines = [json.dumps(make_event(i)).encode() + b"\n" for i in range(3)]
    resp = requests.post(  # a generator body makes requests send Transfer-Encoding: chunked
        f"{fake.url}/import?strict=1&project_id=12345",
        data=iter(lines),
        headers={"Content-Type": "application/x-ndjson"},
        auth=SA,
        timeout=5,
    )
    assert resp.json()["num_records_imported"] == 3
