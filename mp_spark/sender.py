"""The /import batch sender: gzip ndjson batches, classify every answer, back off, and tally.

Pure Python: the transport, the sleep and the random source are injected, so it is tested
without Spark, network or real waiting.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from mp_spark import __version__
from mp_spark.batching import Batch, gzip_body
from mp_spark.config import Credentials, MixpanelConfig
from mp_spark.pacing import Pacer
from mp_spark.transport import Response, Transport, TransportError

log = logging.getLogger(__name__)

AUTH_STATUSES = frozenset({401, 403})
ENDPOINTS = {"events": "import", "people": "engage", "groups": "groups", "lookup_table": "lookup-tables"}
INSERT_ID_IN_LINE = re.compile(r'"\$insert_id"\s*:\s*"([0-9a-zA-Z-]*)"')


class SendError(Exception):
    """A batch could not be delivered; the Spark task fails."""


class FatalSendError(SendError):
    """Retrying cannot help (bad credentials, wrong host): the whole job should stop."""


class RetriesExhaustedError(SendError):
    """Mixpanel kept answering 429/5xx (or the network kept failing); Spark's task retry takes over."""


class SendCancelledError(SendError):
    """Another batch of the same task failed, so this one stopped retrying."""


@dataclass(frozen=True)
class SenderSettings:
    """What a task's sender needs, picklable; built on the driver by `from_config`, then `for_run`."""

    url: str
    authorization: str = field(repr=False)  # the Basic auth header value: never logged
    max_batch_events: int
    max_batch_bytes: int
    gzip_level: int
    timeout_s: float
    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float
    jitter_min_s: float
    jitter_max_s: float
    pacing: bool  # slow down on 429 instead of only backing off
    rate_share: float  # this task's share of the project's events/s limit (pacing starts there)
    in_flight: int = 1  # requests this task keeps in flight: the job-wide budget / tasks running at once
    max_events_per_second: float | None = None  # this task's share of the job-wide cap
    run_id: str = ""  # lets the tasks of one run on one executor pass their pacing on

    endpoint: str = "import"  # or "engage" / "groups": profile updates; "lookup-tables"
    method: str = "POST"  # PUT for a lookup table
    token: str = field(default="", repr=False)  # the project token that profile updates carry inside

    @classmethod
    def from_config(cls, mixpanel: MixpanelConfig, credentials: Credentials | None, kind: str = "events", *,
                    ip_mapped: bool = False, lookup_table_id: str = "") -> SenderSettings:
        endpoint = ENDPOINTS[kind]
        project = {"project_id": mixpanel.project_id} if mixpanel.project_id else {}
        if endpoint == "import":
            path, params = "import", {"strict": "1", **project}
        elif endpoint == "lookup-tables":
            path, params = f"lookup-tables/{quote(lookup_table_id, safe='')}", project
        else:  # verbose=1: /engage and /groups answer 200 either way, and only then say what they refused
            path, params = endpoint, {"verbose": "1", **({"ip": "0"} if endpoint == "engage" and not ip_mapped else {})}
        with_auth = endpoint in ("import", "lookup-tables")
        return cls(
            url=f"{mixpanel.base_url}/{path}?{urlencode(params)}",
            authorization=credentials.authorization_header() if credentials and with_auth else "",
            max_batch_events=mixpanel.max_batch_events,
            max_batch_bytes=mixpanel.max_batch_bytes,
            gzip_level=mixpanel.gzip_level,
            timeout_s=mixpanel.timeout_s,
            max_attempts=mixpanel.max_attempts,
            backoff_initial_s=mixpanel.backoff_initial_s,
            backoff_max_s=mixpanel.backoff_max_s,
            jitter_min_s=mixpanel.jitter_min_s,
            jitter_max_s=mixpanel.jitter_max_s,
            pacing=mixpanel.pacing,
            rate_share=mixpanel.rate_limit_events_per_second,
            endpoint=endpoint,
            method="PUT" if endpoint == "lookup-tables" else "POST",
            token=credentials.username if credentials and not with_auth else "",
        )

    def for_run(self, run_id: str, tasks: int, mixpanel: MixpanelConfig) -> SenderSettings:
        """Settings for one run's tasks: the job-wide budgets split between the tasks that run at once."""
        cap = mixpanel.max_events_per_second
        return dataclasses.replace(
            self,
            run_id=run_id,
            in_flight=max(1, mixpanel.max_in_flight // tasks),
            max_events_per_second=cap / tasks if cap else None,
            rate_share=min(cap or mixpanel.rate_limit_events_per_second, mixpanel.rate_limit_events_per_second) / tasks,
        )

    def headers(self) -> dict[str, str]:
        if self.endpoint in ("engage", "groups"):  # a JSON array, not gzip: Mixpanel documents no gzip there
            return {"Content-Type": "application/json", "User-Agent": f"mp-spark/{__version__}"}
        headers = {
            "Content-Type": "text/csv" if self.endpoint == "lookup-tables" else "application/x-ndjson",
            "Content-Encoding": "gzip",
            "User-Agent": f"mp-spark/{__version__}",
        }
        if self.authorization:
            headers["Authorization"] = self.authorization
        return headers


@dataclass(frozen=True)
class Rejection:
    """One event Mixpanel refused, with its reason and the JSON line exactly as it was sent."""

    field: str | None
    message: str
    insert_id: str | None
    event: str | None


@dataclass
class SendTally:
    rows: int = 0
    imported: int = 0
    rejected: int = 0
    batches: int = 0  # batches delivered: answered 200 or 400, or refused whole (halves of a split count apart)
    requests: int = 0  # every HTTP attempt
    retries: int = 0
    raw_bytes: int = 0
    gzip_bytes: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    def add(self, other: SendTally) -> None:
        for f in dataclasses.fields(self):
            if f.name != "rejections":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.rejections.extend(other.rejections)


class BatchSender:
    """Sends lines to /import in batches and tallies what happened to every one of them."""

    def __init__(
        self,
        settings: SenderSettings,
        transport: Transport,
        *,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._transport = transport
        self._headers = settings.headers()
        self._stop = threading.Event()
        self._sleep = sleep or self._stop.wait  # by default a failing sibling cuts a backoff short
        self._rng = rng or random.Random()
        self._pacer = Pacer(share=settings.rate_share, max_rate=settings.max_events_per_second,
                            adaptive=settings.pacing, run_id=settings.run_id, sleep=self._sleep)

    def send_batches(self, batches: Iterable[Batch]) -> SendTally:
        """Send every batch, keeping up to `in_flight` requests going; returns the merged tally.

        At most `in_flight` batches are held at once (memory stays flat whatever the partition
        size); gzip and sockets release the GIL, so the worker threads overlap usefully.
        """
        tally = SendTally()
        pending: set[Future[SendTally]] = set()
        pool = ThreadPoolExecutor(max_workers=self._settings.in_flight, thread_name_prefix="mp-send")
        try:
            for batch in batches:
                if len(pending) >= self._settings.in_flight:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    _collect(done, tally)
                tally.rows += batch.count
                pending.add(pool.submit(self.send_batch, batch))
            _collect(wait(pending)[0], tally)
        except BaseException:
            self._stop.set()  # siblings stop retrying; the task fails and Spark resends the partition
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return tally

    def send_batch(self, batch: Batch) -> SendTally:
        """Deliver one batch (splitting it on 413); the tally says what happened to each event."""
        if self._settings.endpoint in ("engage", "groups"):
            return self.send_updates(batch)
        if self._settings.endpoint == "lookup-tables":
            return self.send_table(batch)
        tally = SendTally()
        compressed = gzip_body(batch.body, self._settings.gzip_level)
        response = self._post_with_retries(compressed, batch.count, tally)
        status = response.status
        if status == 200:
            _count_delivered(tally, batch, compressed, rejections=[])
        elif status == 400:
            rejections = parse_failed_records(batch.lines(), response.body)
            _count_delivered(tally, batch, compressed, rejections=rejections)
        elif status == 413 and batch.count > 1:
            # The byte cap is below the documented limit, but the limit is disputed (reference §3): halve.
            lines = batch.lines()
            middle = len(lines) // 2
            tally.add(self.send_batch(Batch.of_lines(lines[:middle])))
            tally.add(self.send_batch(Batch.of_lines(lines[middle:])))
        elif status == 413:
            too_large = rejection(batch.lines()[0], "event", "event alone exceeds Mixpanel's request size limit (413)")
            _count_delivered(tally, batch, compressed, rejections=[too_large])
        elif status in AUTH_STATUSES:
            raise FatalSendError(auth_failure_hint(status, response.body))
        else:
            raise FatalSendError(f"unexpected HTTP {status} from {self._settings.url}: "
                                 f"{error_text(response.body)}")
        return tally

    def send_updates(self, batch: Batch) -> SendTally:
        """Deliver one batch of profile updates to /engage or /groups.

        They answer 200 even when they refuse data, and then name only the first problem, not the
        update: a refused batch is halved and resent until the refused updates stand alone. Every
        operation sent ($set, $set_once, $union, $unset) is idempotent, so resending is safe.
        """
        tally = SendTally()
        body = updates_body(batch.body, self._settings.token)
        response = self._post_with_retries(body, batch.count, tally)
        if response.status in AUTH_STATUSES:
            raise FatalSendError(f"Mixpanel answered {response.status} ({error_text(response.body)}): is "
                                 "MP_PROJECT_TOKEN this project's token, and mixpanel.region its region?")
        if response.status not in (200, 400):
            raise FatalSendError(f"unexpected HTTP {response.status} from {self._settings.url}: "
                                 f"{error_text(response.body)}")
        refused = update_error(response)
        if refused is not None and batch.count > 1:
            lines = batch.lines()
            middle = len(lines) // 2
            tally.add(self.send_updates(Batch.of_lines(lines[:middle])))
            tally.add(self.send_updates(Batch.of_lines(lines[middle:])))
            return tally
        rejections = [] if refused is None else [rejection(batch.lines()[0], None, refused)]
        _count_delivered(tally, batch, body, rejections=rejections)
        return tally

    def send_table(self, table: Batch) -> SendTally:
        """Replace a lookup table with one CSV (`table.count` rows after the header).

        A 400 means Mixpanel kept the old table: every row counts as rejected, with its error, which
        names at most the first 10 bad rows.
        """
        tally = SendTally()
        compressed = gzip_body(table.body, self._settings.gzip_level)
        response = self._post_with_retries(compressed, table.count, tally)
        if response.status in AUTH_STATUSES:
            raise FatalSendError(auth_failure_hint(response.status, response.body))
        if response.status == 400:
            refused = Rejection(None, f"Mixpanel refused the whole table: {error_text(response.body)}", None, None)
            tally.add(SendTally(rejected=table.count, batches=1, raw_bytes=len(table.body),
                                gzip_bytes=len(compressed), rejections=[refused]))
            return tally
        if response.status != 200:
            raise FatalSendError(f"unexpected HTTP {response.status} from {self._settings.url}: "
                                 f"{error_text(response.body)}")
        _count_delivered(tally, table, compressed, rejections=[])
        return tally

    def _post_with_retries(self, body: bytes, events: int, tally: SendTally) -> Response:
        settings = self._settings
        paced_retry_left = settings.pacing
        for attempt in range(1, settings.max_attempts + 1):
            epoch = self._pacer.wait_turn(events)
            if self._stop.is_set():  # checked after the wait: a sibling may have failed meanwhile
                raise SendCancelledError("stopped: another batch of this task failed")
            tally.requests += 1
            retry_after, throttled = None, False
            try:
                response = self._transport.send(settings.method, settings.url, body, self._headers,
                                                settings.timeout_s)
            except TransportError as exc:
                problem = f"no answer ({exc})"
            else:
                if not is_retryable(response.status):
                    if response.status in (200, 400):
                        self._pacer.on_success(events)
                    return response
                throttled = response.status == 429
                if throttled:
                    self._pacer.on_throttled(epoch)
                problem = f"HTTP {response.status}"
                retry_after = retry_after_s(response.headers)
            if attempt == settings.max_attempts:
                raise RetriesExhaustedError(f"gave up after {attempt} attempts; last: {problem}")
            if retry_after is not None:  # never seen from Mixpanel so far; honoured within our backoff's bounds
                wait_s = min(retry_after, settings.backoff_max_s)
            elif throttled and paced_retry_left:
                # The pacer has just slowed down and spaces the retry itself: a batch's first 429 waits only
                # for it. Sleeping seconds more would hold a request slot idle, and at the end of a partition
                # the whole task. A second 429 for the same batch backs off as Mixpanel advises.
                wait_s, paced_retry_left = 0.0, False
            else:
                wait_s = self.backoff_s(attempt)
            log.warning("/%s attempt %d failed (%s); retrying in %.1f s", settings.endpoint, attempt, problem,
                        wait_s)
            tally.retries += 1
            self._sleep(wait_s)
        raise AssertionError("unreachable: the loop returns or raises")

    def backoff_s(self, attempt: int) -> float:
        """Mixpanel's advice: exponential from 2 s, capped at 60 s, plus 1-5 s of jitter."""
        s = self._settings
        exponential = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (attempt - 1))
        return exponential + self._rng.uniform(s.jitter_min_s, s.jitter_max_s)


def _collect(done: set[Future[SendTally]], tally: SendTally) -> None:
    for future in done:
        tally.add(future.result())  # re-raises a batch's failure in the task's main thread


def _count_delivered(tally: SendTally, batch: Batch, compressed: bytes, rejections: list[Rejection]) -> None:
    tally.batches += 1
    tally.raw_bytes += len(batch.body)
    tally.gzip_bytes += len(compressed)
    tally.rejected += len(rejections)
    tally.imported += batch.count - len(rejections)
    tally.rejections.extend(rejections)


def updates_body(ndjson: bytes, token: str) -> bytes:
    """Newline-separated updates as the JSON array /engage and /groups take, each given the project token.

    Every line is a JSON object with at least its operation (to_json escapes newlines inside
    strings), so the token goes in after each line's opening brace: one replace, no loop over lines.
    """
    token_field = b'{"$token":' + json.dumps(token).encode() + b","
    updates = ndjson.rstrip(b"\n")[1:].replace(b"\n{", b"," + token_field)
    return b"[" + token_field + updates + b"]"


def update_error(response: Response) -> str | None:
    """None if /engage or /groups took the whole batch (verbose=1: {"status": 1}), else its error."""
    if response.status == 200 and _json_object(response.body).get("status") == 1:
        return None
    return error_text(response.body) or f"HTTP {response.status} without an error message"


def is_retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough to fall back to our own backoff


def parse_failed_records(batch: list[bytes], body: bytes) -> list[Rejection]:
    """Map a strict-mode 400's `failed_records` back to the lines of the batch.

    The valid events of the batch were imported; only the listed ones were not. A 400 that lists
    nothing, or lists records that cannot be matched to lines, leaves no way to tell which events
    were imported, so every event in it is counted as rejected: resending them is safe (their
    `$insert_id`s dedupe), counting a refused event as imported would lose it silently.
    """
    payload = _json_object(body)
    failed = payload.get("failed_records") or []
    by_index: dict[int, Rejection] = {}
    for record in failed:
        index = record.get("index") if isinstance(record, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(batch):
            by_index.clear()
            break
        insert_id = record.get("insert_id", record.get("$insert_id"))
        by_index.setdefault(index, rejection(batch[index], record.get("field"), str(record.get("message", "")),
                                             insert_id))
    if not by_index:
        reason = error_text(body) or "HTTP 400 without failed_records"
        if failed:
            reason = f"{reason} (failed_records could not be matched to the batch's events)"
        return [rejection(line, None, reason) for line in batch]
    return [by_index[i] for i in sorted(by_index)]


def rejection(line: bytes, field: str | None, message: str, insert_id: str | None = None) -> Rejection:
    """A Rejection for one line, taking its `$insert_id` from the line when Mixpanel did not say."""
    event = line.decode("utf-8")
    if insert_id is None:
        found = INSERT_ID_IN_LINE.search(event)
        insert_id = found.group(1) if found else None
    return Rejection(field, message, insert_id, event)


def auth_failure_hint(status: int, body: bytes) -> str:
    return (
        f"Mixpanel answered {status} ({error_text(body) or 'Unauthorized'}). Likely causes: wrong "
        "MP_SERVICE_ACCOUNT_USER/MP_SERVICE_ACCOUNT_SECRET or MP_PROJECT_TOKEN; a service account "
        "without Owner or Admin on the project; a wrong mixpanel.project_id; or the wrong "
        "mixpanel.region (EU and India projects need region eu or in)."
    )


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
