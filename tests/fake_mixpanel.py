"""A loopback HTTP server that answers Mixpanel's ingestion API the way Mixpanel does, for end-to-end tests.

POST /import follows /work/shared/reference/mixpanel-import-api.md (sections 1-5). Faults (drops, 429, 5xx,
latency) can be injected at run time, into every endpoint below. Standard library only.

POST /engage and POST /groups (user and group profile batch updates):
- verbose=1 is required (else 400); the body is a plain JSON array of 1-2000 updates, each at most 1 MB.
  Content-Encoding: gzip gets 400: Mixpanel documents that profile-set takes no gzip, and this fake treats
  the batch endpoints the same. Whole-request errors answer 400 {"error": ..., "status": 0}.
- One invalid update fails the whole batch: 200 {"error": "update <index>: <problem>", "status": 0}, and
  nothing from it is applied. Mixpanel only documents that it answers 200 even when data fails validation;
  all-or-nothing is this fake's assumption.
- A missing or empty $token makes the update invalid, with Mixpanel's measured message "$token, missing or
  empty". Another project's token is accepted (200, status 1) but never applied here: Mixpanel matches
  tokens to projects after answering, and documents that its 200 "does not signify a valid project token".
  `foreign_token_updates` counts such updates.
- Valid batches are applied in arrival order to `profiles` / `group_profiles` (apply_profile_operation).

PUT /lookup-tables/{id}?project_id=... (replace a lookup table):
- Only a service account of this project is accepted; a project token gets the /import 401.
- The body is text/csv, gzip allowed: over max_lookup_table_bytes uncompressed is 413. The CSV needs a
  header of unique non-empty names, at least one data row and the same field count on every row (Python's
  csv module, strict quoting; blank lines skipped); else 400 listing at most 10 bad rows.
- 200 replaces the whole table; values stay raw strings (Mixpanel's typing of numbers, dates and lists is not
  modelled). Past lookup_put_limit authenticated PUTs (whatever their answer, counted from construction or
  reset()) the fake answers 429; Mixpanel allows 100 calls per rolling 24 h.
"""

from __future__ import annotations

import base64
import collections
import copy
import csv
import functools
import gzip
import io
import json
import random
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

MIN_TIME_MS = 31_536_000_000  # 1971-01-01T00:00:00Z: /import rejects anything earlier
MAX_FUTURE_MS = 3_600_000  # more than 1 hour ahead of the server clock is rejected
MS_THRESHOLD = 100_000_000_000  # 1e11: at or above this `time` is read as milliseconds, below as seconds
MAX_EVENT_BYTES = 1_000_000  # one event must be under 1 MB of compact JSON
MAX_PROPERTIES = 255  # an event must have fewer than this many properties
MAX_DEPTH = 3  # objects/arrays may nest at most 3 levels
INSERT_ID_RE = re.compile(r"[0-9a-zA-Z-]{1,36}")
# Rejected as distinct_id, $distinct_id and $insert_id, compared case-insensitively. `""` is NOT on the list.
PLACEHOLDER_IDS = frozenset(
    {
        "00000000-0000-0000-0000-000000000000",
        "anon",
        "anonymous",
        "nil",
        "none",
        "null",
        "n/a",
        "na",
        "undefined",
        "unknown",
        "<nil>",
        "0",
        "-1",
        "true",
        "false",
        "[]",
        "{}",
        "lmy47d",
    }
)
_SURROGATE = re.compile("[\ud800-\udfff]")  # invalid UTF-8 bytes decode to lone surrogates

MAX_UPDATES = 2000  # /engage and /groups: updates per request
MAX_UPDATE_BYTES = 1_000_000  # /engage and /groups: one update's compact JSON may be at most 1 MB
ENGAGE_OPERATIONS = frozenset({"$set", "$set_once", "$add", "$union", "$append", "$remove", "$unset", "$delete"})
GROUP_OPERATIONS = ENGAGE_OPERATIONS - {"$append"}
_ENGAGE_KEYS = frozenset({"$token", "$distinct_id", "$ip", "$ignore_time", "$ignore_alias"})
_GROUP_KEYS = frozenset({"$token", "$group_key", "$group_id"})
_CREATING_OPERATIONS = frozenset({"$set", "$set_once", "$add", "$union", "$append"})  # on a missing profile
_LOOKUP_PATH = re.compile(r"/lookup-tables/([^/]+)")
MAX_BAD_ROWS_LISTED = 10  # a lookup-table 400 lists at most the first 10 bad rows

UNAUTHORIZED = {"code": 401, "error": "Invalid credentials", "status": "Unauthorized"}
RATE_LIMITED = {
    "code": 429,
    "error": "Project exceeded rate limits. Please retry the request with exponential backoff.",
    "status": "Too Many Requests",
}
_5XX_STATUS = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
_STATUS_TEXT = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    **_5XX_STATUS,
}


@dataclass
class Faults:
    """Fault-injection knobs; probabilities are per request to /import, /engage, /groups or /lookup-tables."""

    rate_429: float = 0.0  # answered 429 before anything is stored
    rate_5xx: float = 0.0  # answered 500/502/503 (random) before anything is stored
    rate_5xx_after_import: float = 0.0  # the request's data IS stored, then answered 503 (client must resend)
    rate_drop: float = 0.0  # connection closed without any response, after the body was read
    latency_s: float = 0.0  # added to every response from those endpoints
    retry_after_s: float | None = None  # when set, every 429 carries `Retry-After: <value>`
    refuse_event: str | None = None  # events of this name go to failed_records (a rule the job cannot know)
    # after this many requests that carry credentials (/import, /lookup-tables), each gets 401 as if revoked
    revoke_after_requests: int | None = None
    seed: int = 0


def to_ms(t: int) -> int:
    """Normalise an epoch `time` to ms (Mixpanel reads values >= 1e11 as ms, smaller ones as seconds)."""
    return t if t >= MS_THRESHOLD else t * 1000


def event_key(event: dict[str, Any]) -> tuple[Any, ...]:
    """Dedup key of a valid event: (event, distinct_id, time in ms, $insert_id).

    distinct_id is a string (numbers are stringified, as Mixpanel stores them) or None when absent.
    """
    props = event["properties"]
    distinct = props.get("distinct_id")
    return (
        event["event"],
        None if distinct is None else str(distinct),
        to_ms(props["time"]),
        props["$insert_id"],
    )


def validate_event(event: Any, now_ms: int) -> tuple[str, str] | None:
    """Return (field, message) for the first strict-mode rule `event` breaks, or None if it is valid."""
    if not isinstance(event, dict):
        return "event", "event must be a JSON object"
    name = event.get("event")
    if not isinstance(name, str) or not name.strip():
        return "event", "'event' must not be missing or blank"
    if _SURROGATE.search(name):
        return "event", "event is invalid: string should be valid utf8"
    props = event.get("properties")
    if not isinstance(props, dict):
        return "properties", "'properties' must be an object"

    t = props.get("time")
    if t is None:
        return "properties.time", "'properties.time' must not be missing"
    if not _is_int(t):
        return "properties.time", "'properties.time' is invalid: must be specified as seconds since epoch"
    if to_ms(t) < MIN_TIME_MS:
        return "properties.time", "'properties.time' is invalid: must be after 1971-01-01"
    if to_ms(t) > now_ms + MAX_FUTURE_MS:
        return "properties.time", "'properties.time' is invalid: must not be more than 1 hour in the future"

    iid = props.get("$insert_id")
    if iid is None:
        return "properties.$insert_id", "'properties.$insert_id' must not be missing"
    if not isinstance(iid, str) or not INSERT_ID_RE.fullmatch(iid) or iid.lower() in PLACEHOLDER_IDS:
        return (
            "properties.$insert_id",
            "'properties.$insert_id' is invalid: must be 1-36 chars of [0-9a-zA-Z-] and not a placeholder",
        )

    if "distinct_id" in props:
        distinct = props["distinct_id"]
        if isinstance(distinct, bool) or not isinstance(distinct, (str, int, float)):
            return "properties.distinct_id", "'properties.distinct_id' is invalid: must be a string or number"
        if str(distinct).lower() in PLACEHOLDER_IDS:
            return (
                "properties.distinct_id",
                f"'properties.distinct_id' is invalid: {distinct!r} is a placeholder",
            )

    if len(props) >= MAX_PROPERTIES:
        return "properties", f"too many properties: {len(props)} (must be fewer than {MAX_PROPERTIES})"
    for key, value in props.items():
        fld = f"properties.{key}"
        if _has_surrogate(key) or _has_surrogate(value):
            return fld, f"{fld} is invalid: string should be valid utf8"
        if _too_deep(value):
            return fld, f"'{fld}' is invalid: nested deeper than {MAX_DEPTH} levels"
    size = len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())
    if size >= MAX_EVENT_BYTES:
        return "properties", f"event is {size} bytes; must be under {MAX_EVENT_BYTES} bytes"
    return None


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python but `true` is not a JSON number; floats have a fraction part.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_SURROGATE.search(value))
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _too_deep(value: Any, levels_left: int = MAX_DEPTH) -> bool:
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    return levels_left == 0 or any(_too_deep(c, levels_left - 1) for c in children)


def validate_profile_update(update: Any, *, group: bool = False) -> str | None:
    """Return what is wrong with one /engage update (a /groups update if `group`), or None if it is valid."""
    if not isinstance(update, dict):
        return "update must be a JSON object"
    token = update.get("$token")
    if not isinstance(token, str) or not token:
        return "$token, missing or empty"  # Mixpanel's own wording, see the module docstring
    problem = _check_group(update) if group else _check_distinct_id(update)
    if problem:
        return problem
    operations = GROUP_OPERATIONS if group else ENGAGE_OPERATIONS
    allowed = operations | (_GROUP_KEYS if group else _ENGAGE_KEYS)
    unknown = [key for key in update if key not in allowed]
    if unknown:
        return f"unknown key {unknown[0]!r}"
    ops = [key for key in update if key in operations]
    if len(ops) != 1:
        return f"exactly one operation is required ({', '.join(sorted(operations))}); found {len(ops)}"
    problem = _check_operation(ops[0], update[ops[0]]) or _check_flags(update)
    if problem:
        return problem
    if _has_surrogate(update):
        return "update is invalid: string should be valid utf8"
    size = len(json.dumps(update, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_UPDATE_BYTES:
        return f"update is {size} bytes; must be at most {MAX_UPDATE_BYTES} bytes"
    return None


def _check_distinct_id(update: dict[str, Any]) -> str | None:
    distinct = update.get("$distinct_id")
    if distinct is None or distinct == "":
        return "$distinct_id, missing or empty"
    if isinstance(distinct, bool) or not isinstance(distinct, (str, int, float)):
        return "'$distinct_id' is invalid: must be a string or number"
    if str(distinct).lower() in PLACEHOLDER_IDS:
        return f"'$distinct_id' is invalid: {distinct!r} is a placeholder"
    return None


def _check_group(update: dict[str, Any]) -> str | None:
    group_key, group_id = update.get("$group_key"), update.get("$group_id")
    if group_key is None or group_key == "":
        return "$group_key, missing or empty"
    if not isinstance(group_key, str):
        return "'$group_key' is invalid: must be a string"
    if group_id is None or group_id == "":
        return "$group_id, missing or empty"
    if isinstance(group_id, bool) or not isinstance(group_id, (str, int, float)):
        return "'$group_id' is invalid: must be a string or number"
    return None


def _check_operation(op: str, value: Any) -> str | None:
    if op == "$delete":
        return None  # its value is ignored
    if op == "$unset":
        if isinstance(value, list) and all(isinstance(name, str) for name in value):
            return None
        return "'$unset' is invalid: must be a list of property names"
    if not isinstance(value, dict):
        return f"'{op}' is invalid: must be an object"
    if op == "$add" and not all(_is_number(v) for v in value.values()):
        return "'$add' is invalid: every value must be a number"
    if op == "$union" and not all(isinstance(v, list) for v in value.values()):
        return "'$union' is invalid: every value must be a list"
    return None


def _check_flags(update: dict[str, Any]) -> str | None:
    if "$ip" in update and not isinstance(update["$ip"], str):
        return "'$ip' is invalid: must be a string"
    for flag in ("$ignore_time", "$ignore_alias"):
        if flag in update and not isinstance(update[flag], bool):
            return f"'{flag}' is invalid: must be true or false"
    return None


def profile_key(update: dict[str, Any], *, group: bool = False) -> str | tuple[str, str]:
    """distinct_id of a valid /engage update, or (group_key, group_id) of a /groups one, as strings."""
    if group:
        return update["$group_key"], str(update["$group_id"])
    return str(update["$distinct_id"])


def apply_profile_operation(profiles: dict[Any, dict[str, Any]], key: Any, op: str, value: Any) -> None:
    """Apply one valid operation to profiles[key] the way Mixpanel does.

    $set, $set_once, $add, $union and $append create a missing profile; $remove and $unset leave a missing
    profile missing. $add, $union, $append and $remove skip a property whose current value has the wrong type
    (Mixpanel does not document that case).
    """
    if op == "$delete":
        profiles.pop(key, None)
        return
    if key not in profiles and op not in _CREATING_OPERATIONS:
        return
    props = profiles.setdefault(key, {})
    if op == "$unset":
        for name in value:
            props.pop(name, None)
        return
    for name, item in value.items():
        current = props.get(name)
        if op == "$set":
            props[name] = item
        elif op == "$set_once":
            props.setdefault(name, item)
        elif op == "$add" and (current is None or _is_number(current)):
            props[name] = (0 if current is None else current) + item
        elif op == "$union" and (current is None or isinstance(current, list)):
            merged = list(current or [])
            for element in item:
                if not any(_same(element, m) for m in merged):
                    merged.append(element)
            props[name] = merged
        elif op == "$append" and (current is None or isinstance(current, list)):
            props[name] = [*(current or []), item]
        elif op == "$remove" and isinstance(current, list):
            props[name] = [element for element in current if not _same(element, item)]


def _same(a: Any, b: Any) -> bool:
    # JSON equality: Python's == says True == 1 and 1 == 1.0
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def parse_lookup_csv(data: bytes) -> tuple[list[str], list[list[str]]]:
    """The header and data rows of a lookup-table CSV; ValueError says what is wrong with it.

    Blank lines are skipped (as csv.DictReader does); quoting errors fail the parse (csv strict mode).
    """
    try:
        text = data.decode("utf-8-sig")  # a leading BOM (spreadsheet exports) is not part of the first name
    except UnicodeDecodeError as exc:
        raise ValueError(f"CSV is not valid UTF-8: {exc.reason} at byte {exc.start}") from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        records = [(reader.line_num, row) for row in reader if row]
    except csv.Error as exc:
        raise ValueError(f"unable to parse CSV at line {reader.line_num}: {exc}") from exc
    if not records:
        raise ValueError("CSV is empty: a header row is required")
    (_, header), rows = records[0], records[1:]
    if not all(name.strip() for name in header):
        raise ValueError(f"header has an empty column name: {header!r}")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise ValueError(f"header has duplicate column names: {', '.join(map(repr, duplicates))}")
    if not rows:
        raise ValueError("CSV has a header but no data rows")
    bad = [f"line {line} has {len(row)}" for line, row in rows if len(row) != len(header)]
    if bad:
        more = len(bad) - MAX_BAD_ROWS_LISTED
        listed = "; ".join(bad[:MAX_BAD_ROWS_LISTED]) + (f"; and {more} more" if more > 0 else "")
        raise ValueError(f"{len(bad)} rows do not have {len(header)} fields like the header: {listed}")
    return header, [row for _, row in rows]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")  # Python's json accepts NaN/Infinity; Mixpanel does not


def _loads(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


def _text(body: bytes) -> str:
    # surrogateescape turns bad UTF-8 bytes into lone surrogates: validation then fails that item only
    return body.decode("utf-8", errors="surrogateescape")


def _json_array(text: str, items: str) -> list[Any]:
    value = _loads(text)
    if not isinstance(value, list):
        raise ValueError(f"application/json body must be a JSON array of {items}")
    return value


def _parse_events(body: bytes, content_type: str) -> list[Any]:
    """Parse an /import body into a list of events; raises ValueError when it is not parseable."""
    text = _text(body)
    if content_type == "application/x-ndjson":
        # split on "\n" only: str.splitlines() would also split on U+2028 inside JSON strings
        return [_loads(line) for line in text.split("\n") if line.strip()]
    if content_type == "application/json":
        return _json_array(text, "events")
    raise ValueError(
        f"unsupported Content-Type {content_type!r}; use application/json or application/x-ndjson"
    )


def _gunzip(data: bytes, limit: int) -> bytes:
    """Decompress at most limit + 1 bytes: enough to detect "too large" without inflating a gzip bomb."""
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        return f.read(limit + 1)


def _decode(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo Content-Encoding (gzip or none), inflating at most limit + 1 bytes; ValueError if impossible."""
    if encoding == "gzip":
        try:
            return _gunzip(body, limit)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; truncation: EOFError
            raise ValueError("unable to decompress body: invalid gzip data") from exc
    if encoding in ("", "identity"):
        return body
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def _error_body(status: int, error: str) -> dict[str, Any]:
    """The {code, error, status} shape Mixpanel uses for /import and /lookup-tables errors."""
    return {"code": status, "error": error, "status": _STATUS_TEXT[status]}


def _too_large(limit: int) -> _Reply:
    return _Reply(413, _error_body(413, f"request exceeds max limit of {limit} bytes"))


def _profile_error(error: str) -> _Reply:
    """A whole /engage or /groups request refused, in the {error, status} shape those endpoints use."""
    return _Reply(400, {"error": error, "status": 0})


def _lookup_error(error: str) -> _Reply:
    return _Reply(400, _error_body(400, error))


def _bad_request(error: str) -> _Reply:
    return _Reply(400, {**_error_body(400, error), "num_records_imported": 0, "failed_records": []})


@dataclass
class _Reply:
    status: int
    body: dict[str, Any]
    applied: bool = False  # True once the request's data was stored (a 503-after-import may follow)


_Route = tuple[str, Callable[[bytes], _Reply]]  # (the HTTP method a path takes, the function that answers it)


@dataclass
class _Decision:
    """The faults drawn for one request, taken under the lock so concurrent requests see one config."""

    kind: str | None = None  # "drop", "429", "5xx" or None
    status: int = 0
    after_import: bool = False
    latency_s: float = 0.0
    retry_after_s: float | None = None


@dataclass
class _Stats:
    unique: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    raw_arrivals: int = 0
    requests: int = 0
    connections: int = 0
    statuses: collections.Counter[int | str] = field(default_factory=collections.Counter)
    injected: collections.Counter[str] = field(default_factory=collections.Counter)
    max_events_per_request: int = 0
    all_gzip: bool = True
    in_flight: int = 0
    max_concurrent: int = 0
    admission_429s: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    group_profiles: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    engage_updates: int = 0
    group_updates: int = 0
    foreign_token_updates: int = 0
    lookup_tables: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    lookup_table_headers: dict[str, list[str]] = field(default_factory=dict)
    lookup_puts: int = 0
    lookup_calls: int = 0  # authenticated PUTs, counted against lookup_put_limit


class _TokenBucket:
    """Admission limit in events/second; capacity is one second of events, refilled continuously."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()

    def take(self, n: int) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


class FakeMixpanel:
    """Mixpanel-compatible ingestion server on 127.0.0.1 (ephemeral port), run in a background thread.

    Use as a context manager or call start()/stop(). Every statistic attribute returns a thread-safe snapshot.
    With `certificate` it serves HTTPS instead of HTTP.
    """

    def __init__(
        self,
        *,
        project_id: str = "12345",
        service_account: tuple[str, str] = ("sa-user", "sa-secret"),
        project_token: str = "tok-123",
        faults: Faults | None = None,
        max_body_bytes: int = 10 * 1024 * 1024,
        max_events: int = 2000,
        insert_id_key: str = "insert_id",
        admit_events_per_second: float | None = None,
        max_lookup_table_bytes: int = 100 * 1024 * 1024,
        lookup_put_limit: int = 100,
        certificate: tuple[str, str] | None = None,
    ) -> None:
        self.project_id = project_id
        self.service_account = service_account
        self.project_token = project_token
        self.max_body_bytes = max_body_bytes
        self.max_events = max_events
        # failed_records spell it "insert_id" or "$insert_id": both exist in the wild, clients must parse both
        self.insert_id_key = insert_id_key
        self.admit_events_per_second = admit_events_per_second
        self.max_lookup_table_bytes = max_lookup_table_bytes  # uncompressed CSV; Mixpanel: 100 MB
        # Mixpanel allows 100 calls per rolling 24 h; the fake counts them from construction or reset()
        self.lookup_put_limit = lookup_put_limit
        # HTTPS with this (certificate file, key file), both PEM; plain HTTP without
        self._tls: ssl.SSLContext | None = None
        if certificate:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*certificate)
        self._lock = threading.Lock()
        self._faults = Faults()
        self._rng = random.Random(0)
        self.set_faults(faults or Faults())
        self._stats = _Stats()
        self._bucket = _TokenBucket(admit_events_per_second) if admit_events_per_second else None
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> FakeMixpanel:
        """Bind an ephemeral port and serve in a daemon thread."""
        if self._server is None:
            self._server = _Server(self)
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="fake-mixpanel", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close idle keep-alive connections (else their threads would keep answering)."""
        if self._server is None:
            return
        self._server.shutdown()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeMixpanel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeMixpanel is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:PORT, or https:// (clients post to url + "/import?...")."""
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    # ---- control -----------------------------------------------------------------------------------------

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault config; the random stream restarts from faults.seed."""
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)
            self._requests_since_faults = 0

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def reset(self) -> None:
        """Clear stored events, profiles and statistics, and refill the admission bucket."""
        with self._lock:
            in_flight = self._stats.in_flight  # requests still running will decrement it
            self._stats = _Stats(in_flight=in_flight)
            if self.admit_events_per_second:
                self._bucket = _TokenBucket(self.admit_events_per_second)

    # ---- snapshots for assertions ------------------------------------------------------------------------

    @property
    def unique_events(self) -> dict[tuple[Any, ...], dict[str, Any]]:
        """(event, distinct_id, time_ms, $insert_id) -> the latest copy received (Mixpanel keeps it)."""
        with self._lock:
            return dict(self._stats.unique)

    @property
    def raw_arrivals(self) -> int:
        """Every event imported, counting duplicates."""
        with self._lock:
            return self._stats.raw_arrivals

    @property
    def requests(self) -> int:
        """HTTP requests received on any path (dropped ones included)."""
        with self._lock:
            return self._stats.requests

    @property
    def connections(self) -> int:
        """TCP connections accepted; fewer than `requests` means keep-alive reuse works."""
        with self._lock:
            return self._stats.connections

    @property
    def statuses(self) -> collections.Counter[int | str]:
        """Status code -> count; connections dropped on purpose are counted under "drop"."""
        with self._lock:
            return collections.Counter(self._stats.statuses)

    @property
    def injected(self) -> collections.Counter[str]:
        """Faults fired: "drop", "429", "5xx", "5xx_after_import", "admission_429"."""
        with self._lock:
            return collections.Counter(self._stats.injected)

    @property
    def max_events_per_request(self) -> int:
        """Largest event count in one parsed /import body."""
        with self._lock:
            return self._stats.max_events_per_request

    @property
    def all_gzip(self) -> bool:
        """True if every /import request had Content-Encoding: gzip (vacuously True before any)."""
        with self._lock:
            return self._stats.all_gzip

    @property
    def max_concurrent(self) -> int:
        """Most requests to /import, /engage, /groups and /lookup-tables being handled at the same moment."""
        with self._lock:
            return self._stats.max_concurrent

    @property
    def in_flight(self) -> int:
        """Requests being handled now."""
        with self._lock:
            return self._stats.in_flight

    @property
    def admission_429s(self) -> int:
        """429 answers caused by the admission rate limit (admit_events_per_second)."""
        with self._lock:
            return self._stats.admission_429s

    @property
    def rejected(self) -> list[dict[str, Any]]:
        """Every failed_records entry returned, each with the offending event added under "event"."""
        with self._lock:
            return list(self._stats.rejected)

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:
        """distinct_id -> properties, after every /engage batch accepted so far (a deep copy)."""
        with self._lock:
            return copy.deepcopy(self._stats.profiles)

    @property
    def group_profiles(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(group_key, str(group_id)) -> properties, after every /groups batch accepted so far (a deep copy)."""
        with self._lock:
            return copy.deepcopy(self._stats.group_profiles)

    @property
    def engage_updates(self) -> int:
        """/engage updates applied to this project's profiles, counting repeats."""
        with self._lock:
            return self._stats.engage_updates

    @property
    def group_updates(self) -> int:
        """/groups updates applied to this project's group profiles, counting repeats."""
        with self._lock:
            return self._stats.group_updates

    @property
    def foreign_token_updates(self) -> int:
        """/engage and /groups updates accepted with another project's $token, so not applied here."""
        with self._lock:
            return self._stats.foreign_token_updates

    @property
    def lookup_tables(self) -> dict[str, list[dict[str, str]]]:
        """Lookup table id -> its rows as {column: raw CSV string}, as last replaced (a deep copy)."""
        with self._lock:
            return copy.deepcopy(self._stats.lookup_tables)

    @property
    def lookup_table_headers(self) -> dict[str, list[str]]:
        """Lookup table id -> its column names in CSV order."""
        with self._lock:
            return copy.deepcopy(self._stats.lookup_table_headers)

    @property
    def lookup_puts(self) -> int:
        """Lookup tables replaced (PUTs answered 200, or 503 by a 5xx-after-import fault)."""
        with self._lock:
            return self._stats.lookup_puts

    # ---- used by the handler -----------------------------------------------------------------------------

    def _track_connection(self, conn: socket.socket, opened: bool) -> None:
        with self._lock:
            if opened:
                self._conns.add(conn)
                self._stats.connections += 1
            else:
                self._conns.discard(conn)

    def _count_request(self) -> None:
        with self._lock:
            self._stats.requests += 1

    def _count_status(self, status: int | str) -> None:
        with self._lock:
            self._stats.statuses[status] += 1

    def _enter(self, import_gzipped: bool | None) -> None:
        """A data request starts; import_gzipped is None for endpoints other than /import."""
        with self._lock:
            stats = self._stats
            stats.in_flight += 1
            stats.max_concurrent = max(stats.max_concurrent, stats.in_flight)
            if import_gzipped is not None:
                stats.all_gzip = stats.all_gzip and import_gzipped

    def _exit(self) -> None:
        with self._lock:
            self._stats.in_flight -= 1

    def _draw_faults(self) -> _Decision:
        with self._lock:
            f, rng = self._faults, self._rng
            d = _Decision(latency_s=f.latency_s, retry_after_s=f.retry_after_s)
            d.after_import = rng.random() < f.rate_5xx_after_import
            if rng.random() < f.rate_drop:
                d.kind = "drop"
            elif rng.random() < f.rate_429:
                d.kind, d.status = "429", 429
            elif rng.random() < f.rate_5xx:
                d.kind, d.status = "5xx", rng.choice(list(_5XX_STATUS))
            if d.kind:
                self._stats.injected[d.kind] += 1
            return d

    def _note_injected(self, kind: str) -> None:
        with self._lock:
            self._stats.injected[kind] += 1
            if kind == "admission_429":
                self._stats.admission_429s += 1

    def _authorized(self, header: str | None, project_id: str | None, *, token_ok: bool = True) -> bool:
        """A service account with this ?project_id=, or (when token_ok) the project token as the user."""
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
            return False
        user, colon, secret = decoded.partition(":")
        if not colon:  # "token" without ":" is a classic malformed header; Mixpanel answers 401
            return False
        if (user, secret) == self.service_account:
            return project_id == self.project_id  # a service account needs ?project_id=
        if token_ok and user == self.project_token and secret == "":
            return project_id in (None, self.project_id)
        return False

    def _revoked(self) -> bool:
        with self._lock:
            self._requests_since_faults += 1
            limit = self._faults.revoke_after_requests
            return limit is not None and self._requests_since_faults > limit

    def _admit(self, n: int) -> bool:
        with self._lock:
            self._stats.max_events_per_request = max(self._stats.max_events_per_request, n)
            return self._bucket is None or self._bucket.take(n)

    def _import(self, events: list[Any]) -> tuple[int, list[dict[str, Any]]]:
        """Validate and store; returns (num_records_imported, failed_records)."""
        now_ms = int(time.time() * 1000)
        problems = [validate_event(ev, now_ms) for ev in events]  # outside the lock: it can be slow
        refuse = self.faults.refuse_event
        problems = [
            ("event", f"'event' is refused by this server: {refuse!r}")
            if problem is None and refuse is not None and ev.get("event") == refuse else problem
            for ev, problem in zip(events, problems, strict=True)
        ]
        failed: list[dict[str, Any]] = []
        imported = 0
        with self._lock:
            for index, (ev, problem) in enumerate(zip(events, problems, strict=True)):
                if problem is None:
                    self._stats.raw_arrivals += 1
                    self._stats.unique[event_key(ev)] = ev
                    imported += 1
                    continue
                props = ev.get("properties") if isinstance(ev, dict) else None
                iid = props.get("$insert_id") if isinstance(props, dict) else None
                record = {"index": index, self.insert_id_key: iid, "field": problem[0], "message": problem[1]}
                failed.append(record)
                self._stats.rejected.append({**record, "event": ev})
        return imported, failed

    def _update_profiles(self, updates: list[dict[str, Any]], *, group: bool) -> None:
        """Apply a valid batch in order; the lock keeps concurrent batches from interleaving."""
        operations = GROUP_OPERATIONS if group else ENGAGE_OPERATIONS
        with self._lock:
            stats = self._stats
            store: dict[Any, dict[str, Any]] = stats.group_profiles if group else stats.profiles
            for update in updates:
                if update["$token"] != self.project_token:
                    stats.foreign_token_updates += 1  # another project's data: accepted, never seen here
                    continue
                op = next(key for key in update if key in operations)
                apply_profile_operation(store, profile_key(update, group=group), op, update[op])
                if group:
                    stats.group_updates += 1
                else:
                    stats.engage_updates += 1

    def _take_lookup_call(self) -> bool:
        """Count an authenticated lookup-table PUT; False once lookup_put_limit of them have been counted."""
        with self._lock:
            if self._stats.lookup_calls >= self.lookup_put_limit:
                return False
            self._stats.lookup_calls += 1
            return True

    def _replace_lookup_table(self, table_id: str, header: list[str], rows: list[list[str]]) -> None:
        table = [dict(zip(header, row, strict=True)) for row in rows]
        with self._lock:
            self._stats.lookup_tables[table_id] = table
            self._stats.lookup_table_headers[table_id] = header
            self._stats.lookup_puts += 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive handlers must not block interpreter exit
    request_queue_size = 128  # many executors connecting at once must not get ECONNREFUSED

    def __init__(self, fake: FakeMixpanel) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall for seconds.
        TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", int(self.server_address[1])

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept, and in TLS mode shake hands (a client that refuses the certificate fails here, unanswered)."""
        conn, address = super().get_request()
        if self.fake._tls is None:
            return conn, address
        conn.settimeout(10)  # the handshake runs in the accepting thread: a silent client must not stall it
        try:
            conn = self.fake._tls.wrap_socket(conn, server_side=True)
        except OSError:
            conn.close()
            raise
        conn.settimeout(None)
        return conn, address


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so a requests.Session reuses connections
    disable_nagle_algorithm = True  # headers and body go out as two writes: avoid delayed-ACK stalls
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._track_connection(self.connection, opened=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track_connection(self.connection, opened=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        route = self._route(path)
        if route is None or route[0] != self.command:
            self._handle_other(route)
            return
        gzipped = self._content_encoding() == "gzip"
        self._handle(route[1], import_gzipped=gzipped if path == "/import" else None)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _route(self, path: str) -> _Route | None:
        """The route for `path`, or None when the path is unknown."""
        if path == "/import":
            return "POST", self._process_import
        if path in ("/engage", "/groups"):
            return "POST", functools.partial(self._process_profiles, group=path == "/groups")
        lookup = _LOOKUP_PATH.fullmatch(path)
        if lookup:
            return "PUT", functools.partial(self._process_lookup, table_id=unquote(lookup[1]))
        return None

    def _handle_other(self, route: _Route | None) -> None:
        self.server.fake._count_request()
        if self._read_body() is None:
            return
        if route is None:
            self._send(404, _error_body(404, f"no route for {self.path}"))
        else:
            self._send(405, _error_body(405, f"use {route[0]}"))

    def _handle(self, process: Callable[[bytes], _Reply], import_gzipped: bool | None) -> None:
        """Count, read, inject faults, then answer with process(body): shared by every data endpoint."""
        fake = self.server.fake
        fake._count_request()
        fake._enter(import_gzipped)
        try:
            body = self._read_body()  # always read it all, so an early answer keeps the connection usable
            if body is None:
                return
            decision = fake._draw_faults()
            if decision.latency_s:
                time.sleep(decision.latency_s)
            if decision.kind == "drop":
                self._drop()
                return
            if decision.kind == "429":
                self._send(429, RATE_LIMITED, self._retry_after(decision))
                return
            if decision.kind == "5xx":
                self._send_5xx(decision.status)
                return
            reply = process(body)
            if reply.status == 429:
                self._send(429, reply.body, self._retry_after(decision))
            elif reply.applied and decision.after_import:
                fake._note_injected("5xx_after_import")
                self._send_5xx(503)
            else:
                self._send(reply.status, reply.body)
        finally:
            fake._exit()

    def _process_import(self, body: bytes) -> _Reply:
        """Auth, strict, decode, size, parse, admission, then validate and store, in that order."""
        fake = self.server.fake
        query = parse_qs(urlsplit(self.path).query)
        project_id = query.get("project_id", [None])[0]
        if fake._revoked() or not fake._authorized(self.headers.get("Authorization"), project_id):
            return _Reply(401, UNAUTHORIZED)
        if query.get("strict", [None])[0] != "1":
            return _bad_request("strict=1 is required: this server only supports strict mode")

        try:
            body = _decode(body, self._content_encoding(), fake.max_body_bytes)
        except ValueError as exc:
            return _bad_request(str(exc))
        if len(body) > fake.max_body_bytes:
            return _too_large(fake.max_body_bytes)

        try:
            events = _parse_events(body, self.headers.get_content_type())
        except ValueError as exc:
            return _bad_request(f"unable to parse request body: {exc}")
        if not events:
            return _bad_request("request contains no events")
        if len(events) > fake.max_events:
            return _bad_request(f"request exceeds max limit of {fake.max_events} events ({len(events)} sent)")
        if not fake._admit(len(events)):
            fake._note_injected("admission_429")
            return _Reply(429, RATE_LIMITED)

        imported, failed = fake._import(events)
        if not failed:
            return _Reply(200, {"code": 200, "num_records_imported": imported, "status": "OK"}, applied=True)
        body_400 = {
            "code": 400,
            "error": "some data points in the request failed validation",
            "status": "Bad Request",
            "num_records_imported": imported,
            "failed_records": failed,
        }
        return _Reply(400, body_400, applied=True)

    def _process_profiles(self, body: bytes, *, group: bool) -> _Reply:
        """/engage or /groups: verbose, encoding, parse, count, then validate all and apply all or nothing."""
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        if query.get("verbose", [None])[0] != "1":
            return _profile_error(f"verbose=1 is required: this server only answers {path} verbosely")
        encoding = self._content_encoding()
        if encoding not in ("", "identity"):
            return _profile_error(f"Content-Encoding {encoding!r} is not supported by {path}: send plain JSON")
        content_type = self.headers.get_content_type()
        if content_type != "application/json":
            return _profile_error(f"unsupported Content-Type {content_type!r}; use application/json")
        try:
            updates = _json_array(_text(body), "updates")
        except ValueError as exc:
            return _profile_error(f"unable to parse request body: {exc}")
        if not updates:
            return _profile_error("request contains no updates")
        if len(updates) > MAX_UPDATES:
            return _profile_error(f"request exceeds max limit of {MAX_UPDATES} updates ({len(updates)} sent)")
        for index, update in enumerate(updates):
            problem = validate_profile_update(update, group=group)
            if problem:
                return _Reply(200, {"error": f"update {index}: {problem}", "status": 0})
        self.server.fake._update_profiles(updates, group=group)
        return _Reply(200, {"error": None, "status": 1}, applied=True)

    def _process_lookup(self, body: bytes, *, table_id: str) -> _Reply:
        """Service-account auth, the PUT limit, type, decode, size, then parse the CSV and replace the table."""
        fake = self.server.fake
        project_id = parse_qs(urlsplit(self.path).query).get("project_id", [None])[0]
        authorization = self.headers.get("Authorization")
        if fake._revoked() or not fake._authorized(authorization, project_id, token_ok=False):
            return _Reply(401, UNAUTHORIZED)
        if not fake._take_lookup_call():
            error = f"lookup tables may be replaced at most {fake.lookup_put_limit} times per 24 hours"
            return _Reply(429, _error_body(429, error))
        content_type = self.headers.get_content_type()
        if content_type != "text/csv":
            return _lookup_error(f"unsupported Content-Type {content_type!r}; use text/csv")
        try:
            body = _decode(body, self._content_encoding(), fake.max_lookup_table_bytes)
        except ValueError as exc:
            return _lookup_error(str(exc))
        if len(body) > fake.max_lookup_table_bytes:
            return _too_large(fake.max_lookup_table_bytes)
        try:
            header, rows = parse_lookup_csv(body)
        except ValueError as exc:
            return _lookup_error(str(exc))
        fake._replace_lookup_table(table_id, header, rows)
        return _Reply(200, {"code": 200, "status": "OK"}, applied=True)

    # ---- wire helpers ------------------------------------------------------------------------------------

    def _content_encoding(self) -> str:
        return self.headers.get("Content-Encoding", "").strip().lower()

    def _read_body(self) -> bytes | None:
        """The whole request body, or None (connection closed, no answer) when it cannot be read."""
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked()
            length = int(self.headers.get("Content-Length") or 0)
            if length >= 0:  # read(-1) would block until the client closes
                body = self.rfile.read(length)
                if len(body) == length:
                    return body
        except (OSError, ValueError):
            pass
        self.close_connection = True  # framing is broken or the client left: no answer is possible
        return None

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while self.rfile.readline().strip():  # skip trailers up to the blank line
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline()  # CRLF after each chunk

    def _drop(self) -> None:
        self.server.fake._count_status("drop")
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)  # EOF with no status line: the client sees a reset/EOF
        except OSError:
            pass

    @staticmethod
    def _retry_after(decision: _Decision) -> dict[str, str]:
        if decision.retry_after_s is None:
            return {}
        return {"Retry-After": f"{decision.retry_after_s:g}"}

    def _send_5xx(self, status: int) -> None:
        self._send(status, _error_body(status, "the server encountered an error, please retry"))

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.server.fake._count_status(status)
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (e.g. its timeout fired during injected latency)
            self.close_connection = True
