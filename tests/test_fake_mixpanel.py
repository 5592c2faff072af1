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

from tests.fake_mixpanel import MAX_EVENT_BYTES, MAX_UPDATE_BYTES, RATE_LIMITED, FakeMixpanel, Faults

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
    # ids that do not change with the clock: pytest -n 2's processes must collect the same tests
    ids=["1970 in s", "1970 in ms", "2 h ahead in ms", "2 h ahead in s", "a float", "a string"],
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
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200, 200, 200]
    assert fake.max_concurrent >= 2  # handled in parallel, not one after another


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


# ---- /engage and /groups -------------------------------------------------------------------------------

TOKEN = "tok-123"
OK = {"error": None, "status": 1}


def user_update(op: str, value: Any, distinct_id: object = "u1", **extra: Any) -> dict[str, Any]:
    return {"$token": TOKEN, "$distinct_id": distinct_id, op: value, **extra}


def group_update(op: str, value: Any, group_id: object = "acme", group_key: object = "company") -> dict[str, Any]:
    return {"$token": TOKEN, "$group_key": group_key, "$group_id": group_id, op: value}


def send_profiles(
    fake: FakeMixpanel,
    updates: list[Any],
    *,
    path: str = "/engage",
    params: dict[str, str] | None = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    session: requests.Session | None = None,
) -> requests.Response:
    body = json.dumps(updates).encode() if data is None else data
    query = {"verbose": "1", "ip": "0"} if params is None else params
    return (session or requests).post(
        f"{fake.url}{path}",
        params=query,
        data=body,
        headers={"Content-Type": "application/json", **(headers or {})},
        timeout=5,
    )


def test_engage_applies_batch_in_order_and_counts_updates(fake: FakeMixpanel) -> None:
    updates = [
        user_update("$set", {"plan": "free", "seats": 1}),
        user_update("$set", {"plan": "paid"}, **{"$ip": "1.2.3.4", "$ignore_time": True}),
        user_update("$set", {"name": "Bo"}, distinct_id=42),
    ]
    resp = send_profiles(fake, updates)
    assert (resp.status_code, resp.json()) == (200, OK)
    assert fake.profiles == {"u1": {"plan": "paid", "seats": 1}, "42": {"name": "Bo"}}
    assert (fake.engage_updates, fake.group_updates, fake.group_profiles) == (3, 0, {})


def test_engage_counts_repeated_updates(fake: FakeMixpanel) -> None:
    for _ in range(2):
        send_profiles(fake, [user_update("$add", {"logins": 1})])
    assert fake.profiles == {"u1": {"logins": 2}}
    assert fake.engage_updates == 2


BASE = {"plan": "free", "n": 1, "tags": ["a", "b"]}


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("$set", {"plan": "paid", "new": 1}, {**BASE, "plan": "paid", "new": 1}),
        ("$set_once", {"plan": "paid", "new": 1}, {**BASE, "new": 1}),
        ("$add", {"n": 2.5, "m": -1}, {**BASE, "n": 3.5, "m": -1}),
        ("$add", {"plan": 1}, BASE),  # the current value is not a number: left alone
        ("$union", {"tags": ["b", "c", "c"], "new": [1]}, {**BASE, "tags": ["a", "b", "c"], "new": [1]}),
        ("$union", {"tags": [True]}, {**BASE, "tags": ["a", "b", True]}),
        ("$append", {"tags": "a", "new": 1}, {**BASE, "tags": ["a", "b", "a"], "new": [1]}),
        ("$remove", {"tags": "a", "missing": "x"}, {**BASE, "tags": ["b"]}),
        ("$unset", ["plan", "missing"], {"n": 1, "tags": ["a", "b"]}),
    ],
)
def test_engage_operation_updates_existing_profile(
    fake: FakeMixpanel, op: str, value: Any, expected: dict[str, Any]
) -> None:
    assert send_profiles(fake, [user_update("$set", BASE), user_update(op, value)]).json() == OK
    assert fake.profiles == {"u1": expected}


def test_engage_delete_removes_profile_and_remove_or_unset_create_none(fake: FakeMixpanel) -> None:
    updates = [
        user_update("$set", {"a": 1}),
        user_update("$delete", "", **{"$ignore_alias": True}),
        user_update("$remove", {"tags": "x"}, distinct_id="u2"),
        user_update("$unset", ["a"], distinct_id="u3"),
        user_update("$append", {"tags": "x"}, distinct_id="u4"),
    ]
    assert send_profiles(fake, updates).json() == OK
    assert fake.profiles == {"u4": {"tags": ["x"]}}
    assert fake.engage_updates == 5


def test_profiles_snapshot_is_a_deep_copy(fake: FakeMixpanel) -> None:
    send_profiles(fake, [user_update("$set", {"tags": ["a"]})])
    fake.profiles["u1"]["tags"].append("b")
    assert fake.profiles == {"u1": {"tags": ["a"]}}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ("not an object", "update must be a JSON object"),
        ({"$distinct_id": "u2", "$set": {}}, "$token, missing or empty"),
        (user_update("$set", {}, **{"$token": ""}), "$token, missing or empty"),
        ({"$token": TOKEN, "$set": {"a": 1}}, "$distinct_id, missing or empty"),
        (user_update("$set", {}, distinct_id=""), "$distinct_id, missing or empty"),
        (user_update("$set", {}, distinct_id=True), "must be a string or number"),
        (user_update("$set", {}, distinct_id="Anonymous"), "is a placeholder"),
        (user_update("$set", {}, distinct_id=-1), "is a placeholder"),
        ({"$token": TOKEN, "$distinct_id": "u2"}, "exactly one operation is required"),
        (user_update("$set", {}, **{"$add": {"n": 1}}), "found 2"),
        ({**user_update("$set", {}), "distinct_id": "u2"}, "unknown key 'distinct_id'"),
        (user_update("$set", ["a"]), "'$set' is invalid: must be an object"),
        (user_update("$set_once", "a"), "'$set_once' is invalid: must be an object"),
        (user_update("$add", {"n": "1"}), "'$add' is invalid: every value must be a number"),
        (user_update("$add", {"n": True}), "'$add' is invalid: every value must be a number"),
        (user_update("$union", {"t": "a"}), "'$union' is invalid: every value must be a list"),
        (user_update("$append", []), "'$append' is invalid: must be an object"),
        (user_update("$remove", None), "'$remove' is invalid: must be an object"),
        (user_update("$unset", {"a": 1}), "'$unset' is invalid: must be a list of property names"),
        (user_update("$unset", ["a", 1]), "'$unset' is invalid: must be a list of property names"),
        (user_update("$set", {}, **{"$ignore_time": "yes"}), "'$ignore_time' is invalid"),
        (user_update("$set", {}, **{"$ignore_alias": 1}), "'$ignore_alias' is invalid"),
        (user_update("$set", {}, **{"$ip": 0}), "'$ip' is invalid"),
        (user_update("$set", {"blob": "x" * MAX_UPDATE_BYTES}), f"must be at most {MAX_UPDATE_BYTES} bytes"),
    ],
)
def test_engage_invalid_update_rejects_whole_batch(fake: FakeMixpanel, update: Any, message: str) -> None:
    updates = [user_update("$set", {"a": 1}), update, user_update("$set", {"b": 2}, distinct_id="u3"), "bad too"]
    resp = send_profiles(fake, updates)
    body = resp.json()
    assert (resp.status_code, body["status"]) == (200, 0)
    assert body["error"].startswith("update 1: ") and message in body["error"]
    assert fake.profiles == {} and fake.engage_updates == 0


def test_engage_update_of_exactly_1_mb_is_accepted(fake: FakeMixpanel) -> None:
    size = len(json.dumps(user_update("$set", {"blob": ""}), separators=(",", ":")))
    assert send_profiles(fake, [user_update("$set", {"blob": "x" * (MAX_UPDATE_BYTES - size)})]).json() == OK


def test_engage_invalid_utf8_rejects_batch(fake: FakeMixpanel) -> None:
    data = b'[{"$token": "tok-123", "$distinct_id": "u1", "$set": {"name": "\xff"}}]'
    body = send_profiles(fake, [], data=data).json()
    assert body == {"error": "update 0: update is invalid: string should be valid utf8", "status": 0}


@pytest.mark.parametrize("path", ["/engage", "/groups"])
def test_profiles_refuse_gzip_body(fake: FakeMixpanel, path: str) -> None:
    update = user_update("$set", {"a": 1}) if path == "/engage" else group_update("$set", {"a": 1})
    data = gzip.compress(json.dumps([update]).encode())
    resp = send_profiles(fake, [], path=path, data=data, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 400
    assert resp.json() == {"error": f"Content-Encoding 'gzip' is not supported by {path}: send plain JSON", "status": 0}
    assert (fake.profiles, fake.group_profiles) == ({}, {})


@pytest.mark.parametrize(
    ("params", "data", "content_type", "message"),
    [
        ({"ip": "0"}, None, "application/json", "verbose=1 is required"),
        ({"verbose": "0"}, None, "application/json", "verbose=1 is required"),
        (None, None, "application/x-www-form-urlencoded", "unsupported Content-Type"),
        (None, b"[{", "application/json", "unable to parse request body"),
        (None, b'[{"$set": {"x": NaN}}]', "application/json", "unable to parse request body"),
        (None, b'{"$token": "tok-123"}', "application/json", "must be a JSON array of updates"),
        (None, b"[]", "application/json", "request contains no updates"),
    ],
)
def test_engage_malformed_request_returns_400(
    fake: FakeMixpanel, params: dict[str, str] | None, data: bytes | None, content_type: str, message: str
) -> None:
    updates = [user_update("$set", {"a": 1})]
    resp = send_profiles(fake, updates, params=params, data=data, headers={"Content-Type": content_type})
    assert resp.status_code == 400
    assert resp.json()["status"] == 0 and message in resp.json()["error"]
    assert fake.profiles == {}


def test_engage_accepts_2000_updates_and_refuses_2001(fake: FakeMixpanel) -> None:
    updates = [user_update("$add", {"n": 1}, distinct_id=f"u{i}") for i in range(2001)]
    assert send_profiles(fake, updates[:2000]).json() == OK
    resp = send_profiles(fake, updates)
    assert resp.status_code == 400
    assert resp.json() == {"error": "request exceeds max limit of 2000 updates (2001 sent)", "status": 0}
    assert fake.engage_updates == 2000


@pytest.mark.parametrize("path", ["/engage", "/groups"])
def test_profiles_with_another_projects_token_are_accepted_but_not_applied(fake: FakeMixpanel, path: str) -> None:
    make = user_update if path == "/engage" else group_update
    updates = [make("$set", {"a": 1}), {**make("$set", {"b": 2}), "$token": "other-project"}]
    assert send_profiles(fake, updates, path=path).json() == OK
    expected_key = "u1" if path == "/engage" else ("company", "acme")
    assert {**fake.profiles, **fake.group_profiles} == {expected_key: {"a": 1}}
    assert (fake.engage_updates + fake.group_updates, fake.foreign_token_updates) == (1, 1)


def test_groups_apply_to_group_profiles_keyed_by_key_and_string_id(fake: FakeMixpanel) -> None:
    updates = [
        group_update("$set", {"name": "Acme", "tags": ["a"]}),
        group_update("$union", {"tags": ["a", "b"]}),
        group_update("$remove", {"tags": "a"}),
        group_update("$add", {"seats": 5}, group_id=42),
        group_update("$set_once", {"seats": 1, "tier": "gold"}, group_id=42),
        group_update("$unset", ["tier"], group_id=42),
        group_update("$set", {"x": 1}, group_id="gone"),
        group_update("$delete", None, group_id="gone"),
        group_update("$set", {"x": 1}, group_key="team"),
    ]
    resp = send_profiles(fake, updates, path="/groups")
    assert (resp.status_code, resp.json()) == (200, OK)
    assert fake.group_profiles == {
        ("company", "acme"): {"name": "Acme", "tags": ["b"]},
        ("company", "42"): {"seats": 5},
        ("team", "acme"): {"x": 1},
    }
    assert (fake.group_updates, fake.engage_updates, fake.profiles) == (9, 0, {})


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"$group_key": "company", "$group_id": "a", "$set": {}}, "$token, missing or empty"),
        ({"$token": TOKEN, "$group_id": "a", "$set": {}}, "$group_key, missing or empty"),
        (group_update("$set", {}, group_key=""), "$group_key, missing or empty"),
        (group_update("$set", {}, group_key=5), "'$group_key' is invalid: must be a string"),
        ({"$token": TOKEN, "$group_key": "company", "$set": {}}, "$group_id, missing or empty"),
        (group_update("$set", {}, group_id=""), "$group_id, missing or empty"),
        (group_update("$set", {}, group_id=False), "'$group_id' is invalid: must be a string or number"),
        (group_update("$set", {}, group_id=["a"]), "'$group_id' is invalid: must be a string or number"),
        (group_update("$append", {"tags": "a"}), "unknown key '$append'"),
        ({**group_update("$set", {}), "$distinct_id": "u1"}, "unknown key '$distinct_id'"),
        (group_update("$add", {"n": "1"}), "'$add' is invalid: every value must be a number"),
    ],
)
def test_groups_invalid_update_rejects_whole_batch(fake: FakeMixpanel, update: Any, message: str) -> None:
    resp = send_profiles(fake, [group_update("$set", {"a": 1}), update], path="/groups")
    body = resp.json()
    assert (resp.status_code, body["status"]) == (200, 0)
    assert body["error"].startswith("update 1: ") and message in body["error"]
    assert fake.group_profiles == {} and fake.group_updates == 0


def test_groups_require_verbose_and_cap_batch_at_2000(fake: FakeMixpanel) -> None:
    assert send_profiles(fake, [group_update("$set", {})], path="/groups", params={}).status_code == 400
    updates = [group_update("$set", {}, group_id=i) for i in range(2001)]
    assert send_profiles(fake, updates, path="/groups").status_code == 400
    assert fake.group_updates == 0


@pytest.mark.parametrize("path", ["/engage", "/groups"])
def test_profile_endpoints_answer_405_to_other_methods(fake: FakeMixpanel, path: str) -> None:
    resp = requests.get(f"{fake.url}{path}?verbose=1", timeout=5)
    assert resp.status_code == 405 and resp.json()["error"] == "use POST"


# ---- PUT /lookup-tables/{id} ---------------------------------------------------------------------------

LOOKUP_OK = {"code": 200, "status": "OK"}


def put_table(
    fake: FakeMixpanel,
    table_id: str,
    data: str | bytes,
    *,
    auth: tuple[str, str] = SA,
    params: dict[str, str] | None = None,
    gzipped: bool = False,
    content_type: str = "text/csv",
    session: requests.Session | None = None,
) -> requests.Response:
    raw = data.encode() if isinstance(data, str) else data
    headers = {"Content-Type": content_type}
    if gzipped:
        raw, headers["Content-Encoding"] = gzip.compress(raw), "gzip"
    return (session or requests).put(
        f"{fake.url}/lookup-tables/{table_id}",
        params={"project_id": "12345"} if params is None else params,
        data=raw,
        headers=headers,
        auth=auth,
        timeout=5,
    )


def test_lookup_put_stores_rows_as_raw_strings_in_header_order(fake: FakeMixpanel) -> None:
    resp = put_table(fake, "t1", 'sku,name,price\nA1,"Mug, large",9.50\nB2,,true\n')
    assert (resp.status_code, resp.json()) == (200, LOOKUP_OK)
    assert fake.lookup_tables == {
        "t1": [{"sku": "A1", "name": "Mug, large", "price": "9.50"}, {"sku": "B2", "name": "", "price": "true"}]
    }
    assert fake.lookup_table_headers == {"t1": ["sku", "name", "price"]}
    assert fake.lookup_puts == 1


def test_lookup_put_replaces_the_whole_table_and_only_that_table(fake: FakeMixpanel) -> None:
    put_table(fake, "t1", "id,a,b\n1,x,y\n2,x,y\n")
    put_table(fake, "t2", "id\n9\n")
    assert put_table(fake, "t1", "b,id\nz,3\n").json() == LOOKUP_OK
    assert fake.lookup_tables == {"t1": [{"b": "z", "id": "3"}], "t2": [{"id": "9"}]}
    assert fake.lookup_table_headers == {"t1": ["b", "id"], "t2": ["id"]}
    assert fake.lookup_puts == 3


def test_lookup_put_accepts_gzip_crlf_bom_blank_lines_and_quoted_newlines(fake: FakeMixpanel) -> None:
    data = '\ufeffid,note\r\n1,"two\nlines"\r\n\r\n2,ok\r\n'
    assert put_table(fake, "t%201", data, gzipped=True).json() == LOOKUP_OK
    assert fake.lookup_tables == {"t 1": [{"id": "1", "note": "two\nlines"}, {"id": "2", "note": "ok"}]}


@pytest.mark.parametrize(
    ("auth", "params"),
    [
        (("tok-123", ""), {"project_id": "12345"}),  # a project token is not enough for lookup tables
        (("tok-123", ""), {}),
        (("sa-user", "wrong"), {"project_id": "12345"}),
        (SA, {}),
        (SA, {"project_id": "999"}),
    ],
)
def test_lookup_put_needs_a_service_account_for_this_project(
    fake: FakeMixpanel, auth: tuple[str, str], params: dict[str, str]
) -> None:
    resp = put_table(fake, "t1", "id\n1\n", auth=auth, params=params)
    assert resp.status_code == 401
    assert resp.json() == {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}
    assert fake.lookup_tables == {} and fake.lookup_puts == 0


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (b"", {}, "CSV is empty: a header row is required"),
        (b"id,name\n", {}, "CSV has a header but no data rows"),
        (b"id,,name\n1,2,3\n", {}, "header has an empty column name"),
        (b"id, \n1,2\n", {}, "header has an empty column name"),
        (b"id,name,id\n1,2,3\n", {}, "header has duplicate column names: 'id'"),
        (b"id,name\n1\n2,b\n3,c,d\n", {}, "2 rows do not have 2 fields like the header: line 2 has 1; line 4 has 3"),
        (b'id,name\n1,"open\n', {}, "unable to parse CSV at line 2: unexpected end of data"),
        (b'id,name\n1,"a"b\n', {}, "unable to parse CSV at line 2"),
        (b"id,name\n\xff,1\n", {}, "CSV is not valid UTF-8"),
        (b"id\n1\n", {"content_type": "application/json"}, "unsupported Content-Type 'application/json'"),
    ],
)
def test_lookup_put_invalid_csv_returns_400_and_keeps_old_table(
    fake: FakeMixpanel, data: bytes, kwargs: dict[str, Any], message: str
) -> None:
    put_table(fake, "t1", "id\nold\n")
    resp = put_table(fake, "t1", data, **kwargs)
    body = resp.json()
    assert resp.status_code == 400
    assert (set(body), body["code"], body["status"]) == ({"code", "error", "status"}, 400, "Bad Request")
    assert message in body["error"]
    assert fake.lookup_tables == {"t1": [{"id": "old"}]} and fake.lookup_puts == 1


def test_lookup_put_invalid_gzip_returns_400(fake: FakeMixpanel) -> None:
    resp = requests.put(
        f"{fake.url}/lookup-tables/t1?project_id=12345",
        data=b"not gzip",
        headers={"Content-Type": "text/csv", "Content-Encoding": "gzip"},
        auth=SA,
        timeout=5,
    )
    assert resp.status_code == 400 and "invalid gzip data" in resp.json()["error"]


def test_lookup_put_lists_at_most_10_bad_rows(fake: FakeMixpanel) -> None:
    error = put_table(fake, "t1", "id,name\n" + "1\n" * 15).json()["error"]
    assert error.startswith("15 rows do not have 2 fields")
    assert "line 11 has 1; and 5 more" in error and "line 12" not in error


def test_lookup_put_over_size_limit_returns_413_even_when_gzip_makes_it_small() -> None:
    with FakeMixpanel(max_lookup_table_bytes=1_000) as fake:
        at_limit = "id\n" + "x" * 996 + "\n"  # 1000 bytes
        assert put_table(fake, "t1", at_limit, gzipped=True).json() == LOOKUP_OK
        resp = put_table(fake, "t1", at_limit + "y\n", gzipped=True)
        assert resp.status_code == 413
        assert resp.json() == {
            "code": 413,
            "error": "request exceeds max limit of 1000 bytes",
            "status": "Request Entity Too Large",
        }
        assert fake.lookup_tables["t1"] == [{"id": "x" * 996}]


def test_lookup_put_limit_counts_authenticated_puts_and_then_answers_429() -> None:
    with FakeMixpanel(lookup_put_limit=2, faults=Faults(retry_after_s=5)) as fake:
        assert put_table(fake, "t1", "id\n1\n", auth=("tok-123", "")).status_code == 401  # not counted
        assert put_table(fake, "t1", "id\n1\n").status_code == 200
        assert put_table(fake, "t1", "id\n").status_code == 400  # counted: Mixpanel limits calls
        resp = put_table(fake, "t1", "id\n2\n")
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "5"
        assert resp.json()["status"] == "Too Many Requests" and "at most 2 times" in resp.json()["error"]
        assert (fake.lookup_tables, fake.lookup_puts) == ({"t1": [{"id": "1"}]}, 1)
        fake.reset()  # a fresh server: the count starts again
        assert put_table(fake, "t1", "id\n3\n").status_code == 200


def test_lookup_paths_other_than_put_keep_404_and_405(fake: FakeMixpanel) -> None:
    assert requests.post(f"{fake.url}/lookup-tables/t1", data=b"id\n1\n", auth=SA, timeout=5).status_code == 405
    assert requests.put(f"{fake.url}/lookup-tables", data=b"id\n1\n", auth=SA, timeout=5).status_code == 404
    assert requests.put(f"{fake.url}/lookup-tables/t1/x", data=b"id\n1\n", auth=SA, timeout=5).status_code == 404


# ---- faults and stats on every endpoint ----------------------------------------------------------------

ENDPOINTS = ["import", "engage", "groups", "lookup"]


def send_one(kind: str, fake: FakeMixpanel, session: requests.Session | None = None) -> requests.Response:
    """One valid request to the endpoint `kind`, which stores one item."""
    if kind == "import":
        return post(fake, [make_event(1)], session=session)
    if kind == "engage":
        return send_profiles(fake, [user_update("$add", {"n": 1})], session=session)
    if kind == "groups":
        return send_profiles(fake, [group_update("$add", {"n": 1})], path="/groups", session=session)
    return put_table(fake, "t1", "id\n1\n", session=session)


def stored(fake: FakeMixpanel, kind: str) -> int:
    counts = {
        "import": fake.raw_arrivals,
        "engage": fake.engage_updates,
        "groups": fake.group_updates,
        "lookup": fake.lookup_puts,
    }
    return counts[kind]


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_injected_429_and_5xx_store_nothing_on_every_endpoint(fake: FakeMixpanel, kind: str) -> None:
    fake.set_faults(Faults(rate_429=1.0, retry_after_s=3))
    resp = send_one(kind, fake)
    assert (resp.status_code, resp.headers["Retry-After"], resp.json()) == (429, "3", RATE_LIMITED)
    fake.set_faults(Faults(rate_5xx=1.0))
    assert send_one(kind, fake).status_code in (500, 502, 503)
    assert stored(fake, kind) == 0
    assert (fake.injected["429"], fake.injected["5xx"]) == (1, 1)


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_injected_5xx_after_import_stores_then_answers_503_on_every_endpoint(fake: FakeMixpanel, kind: str) -> None:
    fake.set_faults(Faults(rate_5xx_after_import=1.0))
    assert send_one(kind, fake).status_code == 503
    assert stored(fake, kind) == 1 and fake.injected["5xx_after_import"] == 1


@pytest.mark.parametrize("kind", ENDPOINTS)
def test_injected_drop_closes_connection_on_every_endpoint(
    fake: FakeMixpanel, session: requests.Session, kind: str
) -> None:
    fake.set_faults(Faults(rate_drop=1.0))
    with pytest.raises(requests.ConnectionError):
        send_one(kind, fake, session=session)
    assert stored(fake, kind) == 0
    fake.set_faults(Faults())
    assert send_one(kind, fake, session=session).status_code == 200  # the session recovers
    assert fake.statuses["drop"] == 1 and stored(fake, kind) == 1


def test_latency_and_concurrency_span_all_endpoints(fake: FakeMixpanel) -> None:
    fake.set_faults(Faults(latency_s=0.3))
    codes: dict[str, int] = {}

    def send(kind: str) -> None:
        codes[kind] = send_one(kind, fake).status_code

    threads = [threading.Thread(target=send, args=(kind,)) for kind in ENDPOINTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == dict.fromkeys(ENDPOINTS, 200)
    assert fake.max_concurrent >= 2  # handled in parallel, not one after another


def test_every_endpoint_shares_request_and_keep_alive_stats(fake: FakeMixpanel, session: requests.Session) -> None:
    for kind in ENDPOINTS:
        assert send_one(kind, fake, session=session).status_code == 200
    assert (fake.requests, fake.connections, fake.statuses[200]) == (4, 1, 4)
    assert fake.all_gzip  # only /import requests count towards all_gzip


def test_revoked_credentials_apply_to_lookup_tables(fake: FakeMixpanel) -> None:
    fake.set_faults(Faults(revoke_after_requests=1))
    assert put_table(fake, "t1", "id\n1\n").status_code == 200
    assert put_table(fake, "t1", "id\n2\n").status_code == 401
    assert fake.lookup_tables == {"t1": [{"id": "1"}]}
