"""Mixpanel's ingestion endpoints: how each one wants a batch encoded, and what each of its answers means.

- `Import`: `POST /import`, gzip ndjson, strict validation with per-event refusals.
- `Profiles`: `POST /engage` and `/groups`, a JSON array (not gzip), the project token in each update.
- `LookupTable`: `PUT /lookup-tables/{id}`, one gzip CSV that replaces the whole table.

The sender (`mp_spark.sender`) retries 408, 429, 5xx and lost connections the same way for all
three; every other answer goes to the endpoint's `classify`, which says: delivered (with the
records it refused), split the batch and send the halves, or stop the run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import quote, urlencode

from mp_spark import __version__
from mp_spark.batching import Batch, gzip_body
from mp_spark.config import Config, Credentials
from mp_spark.tally import Rejection

AUTH_STATUSES = frozenset({401, 403})
INSERT_ID_IN_LINE = re.compile(r'"\$insert_id"\s*:\s*"([0-9a-zA-Z-]*)"')
USER_AGENT = f"mp-spark/{__version__}"

DELIVERED, SPLIT, FATAL = "delivered", "split", "fatal"


@dataclass(frozen=True)
class Answer:
    kind: str  # DELIVERED, SPLIT (resend as two halves) or FATAL (retrying cannot help)
    rejections: tuple[Rejection, ...] = ()  # DELIVERED: the records Mixpanel refused ...
    whole_batch: bool = False  # ... or, when true, every record of the batch, for the one reason given
    message: str = ""  # FATAL: what is wrong, and the likely causes


def is_retryable(status: int) -> bool:
    """Answers that say nothing about the batch itself: send the identical body again later."""
    return status in (408, 429) or status >= 500


@dataclass(frozen=True)
class _Gzipped:
    """An endpoint that takes a gzip body and HTTP Basic auth (a service account, or the project token)."""

    url: str
    authorization: str = field(repr=False)  # the Basic auth header value: never logged
    gzip_level: int = 6
    content_type: ClassVar[str]
    accepted: ClassVar[bytes] = b'{"code":200,"status":"OK"}'  # Mixpanel's answer to a batch it took whole

    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, "Content-Encoding": "gzip", "User-Agent": USER_AGENT,
                "Authorization": self.authorization}

    def encode(self, batch: Batch) -> bytes:
        return gzip_body(batch.body, self.gzip_level)


@dataclass(frozen=True)
class Import(_Gzipped):
    name: ClassVar[str] = "/import"
    method: ClassVar[str] = "POST"
    content_type: ClassVar[str] = "application/x-ndjson"

    def classify(self, status: int, body: bytes, batch: Batch) -> Answer:
        if status == 200:
            return Answer(DELIVERED)
        if status == 400:  # strict mode: the valid events were imported, `failed_records` lists the others
            return Answer(DELIVERED, tuple(parse_failed_records(batch.lines(), body)))
        if status == 413:  # the byte cap is below the documented limit, but the limit is disputed: halve
            return halved(batch, "event", "event")
        return unusable_answer(self, status, body)


@dataclass(frozen=True)
class Profiles:
    """User (`/engage`) or group (`/groups`) profile updates.

    They answer 200 even when they refuse data, and then name only the first problem, not the
    update: a refused batch is halved until the refused updates stand alone. Every operation sent
    ($set, $set_once, $union, $unset) is idempotent, so resending is safe.
    """

    url: str
    token: str = field(repr=False)  # the project token, which each update carries
    name: str = "/engage"  # or /groups
    method: ClassVar[str] = "POST"
    accepted: ClassVar[bytes] = b'{"error":null,"status":1}'  # Mixpanel's answer to a batch it took whole

    def headers(self) -> dict[str, str]:
        return {"Content-Type": "application/json", "User-Agent": USER_AGENT}  # Mixpanel documents no gzip here

    def encode(self, batch: Batch) -> bytes:
        return updates_body(batch.body, self.token)

    def classify(self, status: int, body: bytes, batch: Batch) -> Answer:
        if status == 413:  # not documented here, but a size cap like /import's would answer so
            return halved(batch, None, "update")
        if status not in (200, 400):
            return unusable_answer(self, status, body)
        refused = update_error(status, body)
        if refused is None:
            return Answer(DELIVERED)
        if batch.count > 1:
            return Answer(SPLIT)
        return Answer(DELIVERED, (rejection(batch.lines()[0], None, refused),))


@dataclass(frozen=True)
class LookupTable(_Gzipped):
    """Replaces a lookup table with one CSV: the header, then `batch.count` rows.

    A 400 means Mixpanel kept the old table: every row is rejected, with its error (which names at
    most the first 10 bad rows). CSV rows may hold newlines, so the reason is given once, for all.
    """

    name: ClassVar[str] = "/lookup-tables"
    method: ClassVar[str] = "PUT"
    content_type: ClassVar[str] = "text/csv"

    def classify(self, status: int, body: bytes, batch: Batch) -> Answer:
        if status == 200:
            return Answer(DELIVERED)
        if status == 400:
            reason = Rejection(None, f"Mixpanel refused the whole table: {error_text(body)}", None, None)
            return Answer(DELIVERED, (reason,), whole_batch=True)
        return unusable_answer(self, status, body)


Endpoint = Import | Profiles | LookupTable


def endpoint_for(config: Config, credentials: Credentials | None) -> Endpoint:
    """The endpoint `job.kind` sends to, with its credentials (None for a dry run: nothing is sent)."""
    mixpanel, kind = config.mixpanel, config.job.kind
    project = {"project_id": mixpanel.project_id} if mixpanel.project_id else {}
    secret = credentials.authorization_header() if credentials else ""
    if kind == "events":
        return Import(f"{mixpanel.base_url}/import?{urlencode({'strict': '1', **project})}", secret,
                      mixpanel.gzip_level)
    if kind == "lookup_table":
        table = quote(config.mapping.lookup_table_id, safe="")
        query = f"?{urlencode(project)}" if project else ""
        return LookupTable(f"{mixpanel.base_url}/lookup-tables/{table}{query}", secret, mixpanel.gzip_level)
    path = "engage" if kind == "people" else "groups"
    # verbose=1: /engage and /groups answer 200 either way, and only then say what they refused.
    # ip=0 keeps Mixpanel from geolocating people to the cluster, unless mapping.ip sends $ip.
    params = {"verbose": "1", **({"ip": "0"} if kind == "people" and config.mapping.ip is None else {})}
    return Profiles(f"{mixpanel.base_url}/{path}?{urlencode(params)}", credentials.username if credentials else "",
                    name=f"/{path}")


def halved(batch: Batch, field: str | None, record: str) -> Answer:
    """A 413: send the batch in halves; a `record` too large alone is refused."""
    if batch.count > 1:
        return Answer(SPLIT)
    too_large = rejection(batch.lines()[0], field, f"{record} alone exceeds Mixpanel's request size limit (413)")
    return Answer(DELIVERED, (too_large,))


def unusable_answer(endpoint: Endpoint, status: int, body: bytes) -> Answer:
    """401/403, or a status no endpoint documents: stop, and say what to check."""
    if status in AUTH_STATUSES:
        return Answer(FATAL, message=auth_failure_hint(endpoint, status, body))
    return Answer(FATAL, message=f"unexpected HTTP {status} from {endpoint.name}: {error_text(body)}")


def auth_failure_hint(endpoint: Endpoint, status: int, body: bytes) -> str:
    said = error_text(body) or "Unauthorized"
    if isinstance(endpoint, Profiles):
        return (f"Mixpanel answered {status} ({said}): is MP_PROJECT_TOKEN this project's token, and "
                "mixpanel.region its region?")
    return (
        f"Mixpanel answered {status} ({said}). Likely causes: wrong "
        "MP_SERVICE_ACCOUNT_USER/MP_SERVICE_ACCOUNT_SECRET or MP_PROJECT_TOKEN; a service account "
        "without Owner or Admin on the project; a wrong mixpanel.project_id; or the wrong "
        "mixpanel.region (EU and India projects need region eu or in)."
    )


def updates_body(ndjson: bytes, token: str) -> bytes:
    """Newline-separated updates as the JSON array /engage and /groups take, each given the project token.

    Every line is a JSON object with at least its operation (to_json escapes newlines inside
    strings), so the token goes in after each line's opening brace: one replace, no loop over lines.
    """
    token_field = b'{"$token":' + json.dumps(token).encode() + b","
    updates = ndjson.rstrip(b"\n")[1:].replace(b"\n{", b"," + token_field)
    return b"[" + token_field + updates + b"]"


def update_error(status: int, body: bytes) -> str | None:
    """None if /engage or /groups took the whole batch (verbose=1: {"status": 1}), else its error."""
    if status == 200 and _json_object(body).get("status") == 1:
        return None
    return error_text(body) or f"HTTP {status} without an error message"


def parse_failed_records(batch: list[bytes], body: bytes) -> list[Rejection]:
    """Map a strict-mode 400's `failed_records` back to the lines of the batch.

    The valid events of the batch were imported; only the listed ones were not. A 400 that lists
    nothing, or lists records that cannot be matched to lines (an index out of the batch, or an
    `insert_id` that is not the indexed line's), leaves no way to tell which events were imported,
    so every event in it is counted as rejected: resending them is safe (their `$insert_id`s
    dedupe), counting a refused event as imported would lose it silently.
    """
    payload = _json_object(body)
    failed = payload.get("failed_records") or []
    by_index: dict[int, Rejection] = {}
    for record in failed:
        index = record.get("index") if isinstance(record, dict) else None
        insert_id = record.get("insert_id", record.get("$insert_id")) if isinstance(record, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(batch) or not names_line(insert_id, batch[index]):
            by_index.clear()
            break
        by_index.setdefault(index, rejection(batch[index], record.get("field"), str(record.get("message", "")),
                                             insert_id))
    if not by_index:
        reason = error_text(body) or "HTTP 400 without failed_records"
        if failed:
            reason = f"{reason} (failed_records could not be matched to the batch's events)"
        return [rejection(line, None, reason) for line in batch]
    return [by_index[i] for i in sorted(by_index)]


def names_line(insert_id: object, line: bytes) -> bool:
    """Whether a failed record's `insert_id` (if Mixpanel gave one) is the line's `$insert_id`."""
    in_line = insert_id_in(line.decode("utf-8")) if insert_id is not None else None
    return in_line is None or in_line == str(insert_id)


def rejection(line: bytes, field: str | None, message: str, insert_id: str | None = None) -> Rejection:
    """A Rejection for one line, taking its `$insert_id` from the line when Mixpanel did not say."""
    event = line.decode("utf-8")
    return Rejection(field, message, insert_id if insert_id is not None else insert_id_in(event), event)


def insert_id_in(event: str) -> str | None:
    found = INSERT_ID_IN_LINE.search(event)
    return found.group(1) if found else None


def error_text(body: bytes) -> str:
    """The `error` field of a Mixpanel answer, or the start of the body when it is not JSON."""
    payload = _json_object(body)
    if "error" in payload:
        return str(payload["error"])[:500]
    return body[:200].decode("utf-8", errors="replace")


def _json_object(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}
