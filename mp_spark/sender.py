"""One partition's batches to one endpoint: requests in flight, retries, pacing, and the tally.

Pure Python: the endpoint, the transport, the sleep and the random source are injected, so it is
tested without Spark, network or real waiting. What each answer means is the endpoint's business
(`mp_spark.endpoints`); this module only knows that 408, 429, 5xx and lost connections are worth
sending again.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from mp_spark import counted
from mp_spark.batching import Batch
from mp_spark.config import MixpanelConfig
from mp_spark.endpoints import FATAL, SPLIT, Endpoint, is_retryable
from mp_spark.pacing import Pacer
from mp_spark.tally import EXHAUSTED, Rejection, Tally
from mp_spark.tally import FATAL as FATAL_STATUS
from mp_spark.transport import Transport, TransportError, host_of

log = logging.getLogger(__name__)


class SendStopped(Exception):
    """The partition cannot be sent now: `status` is FATAL (retrying cannot help) or EXHAUSTED."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Cancelled(Exception):
    """Another batch of the same partition stopped it, so this one gave up too."""


@dataclass(frozen=True)
class SenderSettings:
    """How a task sends: batch sizes, retries, its share of the job's budgets. Picklable, holds no secret."""

    max_batch_events: int
    max_batch_bytes: int
    timeout_s: float
    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float
    jitter_min_s: float
    jitter_max_s: float
    pacing: bool  # slow down on 429 instead of only backing off
    rate_share: float  # this task's share of the project's events/s limit (where pacing drops to on a 429)
    in_flight: int = 1  # requests this task keeps in flight: the job-wide budget / tasks sending at once
    max_events_per_second: float | None = None  # this task's share of the job-wide cap
    run_id: str = ""  # lets the tasks of one run on one executor pass their pacing on

    @classmethod
    def for_tasks(cls, mixpanel: MixpanelConfig, tasks: int = 1, run_id: str = "") -> SenderSettings:
        """Settings for each of `tasks` tasks sending at once: the job-wide budgets split between them."""
        cap = mixpanel.max_events_per_second
        return cls(
            max_batch_events=mixpanel.max_batch_events,
            max_batch_bytes=mixpanel.max_batch_bytes,
            timeout_s=mixpanel.timeout_s,
            max_attempts=mixpanel.max_attempts,
            backoff_initial_s=mixpanel.backoff_initial_s,
            backoff_max_s=mixpanel.backoff_max_s,
            jitter_min_s=mixpanel.jitter_min_s,
            jitter_max_s=mixpanel.jitter_max_s,
            pacing=mixpanel.pacing,
            rate_share=min(cap or mixpanel.rate_limit_events_per_second, mixpanel.rate_limit_events_per_second) / tasks,
            in_flight=max(1, mixpanel.max_in_flight // tasks),
            max_events_per_second=cap / tasks if cap else None,
            run_id=run_id,
        )


class BatchSender:
    """Sends batches to one endpoint and tallies what happened to every record in them."""

    def __init__(
        self,
        endpoint: Endpoint,
        settings: SenderSettings,
        transport: Transport,
        *,
        sleep: Callable[[float], object] | None = None,
        rng: random.Random | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """`stop`, once set from outside, cuts a backoff short and starts no more requests."""
        self._endpoint = endpoint
        self._settings = settings
        self._transport = transport
        self._headers = endpoint.headers()
        self._stop = stop or threading.Event()
        self._sleep = sleep or self._stop.wait  # by default a failing sibling cuts a backoff short
        self._rng = rng or random.Random()
        self._pacer = Pacer(share=settings.rate_share, max_rate=settings.max_events_per_second,
                            adaptive=settings.pacing, run_id=settings.run_id, sleep=self._sleep)
        self._lock = threading.Lock()
        self._delivered = Tally()
        self._attempts = Tally()  # requests and retries, counted as they happen (also for a failed partition)
        self._failure: SendStopped | None = None

    @property
    def tally(self) -> Tally:
        """What happened so far: the records delivered, and every request made."""
        with self._lock:
            return self._delivered + self._attempts

    def send(self, batches: Iterable[Batch]) -> Iterator[list[Rejection]]:
        """Send every batch, keeping up to `in_flight` requests going; yields the refused records as
        batches are answered, and raises SendStopped if the partition cannot be sent.

        At most `in_flight` batches are held at once (memory stays flat whatever the partition
        size); gzip and sockets release the GIL, so the worker threads overlap usefully.
        """
        pending: set[Future[list[Rejection]]] = set()
        pool = ThreadPoolExecutor(max_workers=self._settings.in_flight, thread_name_prefix="mp-send")
        try:
            for batch in batches:
                if len(pending) >= self._settings.in_flight:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from self._results(done)
                pending.add(pool.submit(self._deliver_or_stop, batch))
            yield from self._results(wait(pending)[0])
        except (SendStopped, _Cancelled) as stopped:
            raise self._failure or stopped from None  # the cause, not a sibling's "cancelled"
        finally:
            self._stop.set()  # nothing may keep retrying once the partition is over
            pool.shutdown(wait=True, cancel_futures=True)

    def _results(self, done: set[Future[list[Rejection]]]) -> Iterator[list[Rejection]]:
        for future in done:
            rejections = future.result()  # re-raises a batch's failure in the task's own thread
            if rejections:
                yield rejections

    def _deliver_or_stop(self, batch: Batch) -> list[Rejection]:
        try:
            return self._deliver(batch)
        except SendStopped as stopped:
            with self._lock:
                self._failure = self._failure or stopped
            self._stop.set()  # siblings stop retrying
            raise

    def _deliver(self, batch: Batch) -> list[Rejection]:
        """Deliver one batch (splitting it when the endpoint says so); returns the records refused."""
        body = self._endpoint.encode(batch)
        status, answer_body = self._post_with_retries(body, batch.count)
        answer = self._endpoint.classify(status, answer_body, batch)
        if answer.kind == FATAL:
            raise SendStopped(FATAL_STATUS, answer.message)
        if answer.kind == SPLIT:
            lines = batch.lines()
            middle = len(lines) // 2
            return self._deliver(Batch.of_lines(lines[:middle])) + self._deliver(Batch.of_lines(lines[middle:]))
        rejected = batch.count if answer.whole_batch else len(answer.rejections)
        delivered = Tally(rows=batch.count, imported=batch.count - rejected, rejected=rejected, batches=1,
                          raw_bytes=len(batch.body), gzip_bytes=len(body))
        with self._lock:
            self._delivered += delivered
        return list(answer.rejections)

    def _post_with_retries(self, body: bytes, events: int) -> tuple[int, bytes]:
        """The first answer that is not worth retrying, as (status, body)."""
        settings = self._settings
        paced_retry_left = settings.pacing
        for attempt in range(1, settings.max_attempts + 1):
            epoch = self._pacer.wait_turn(events)
            if self._stop.is_set():  # checked after the wait: a sibling may have failed meanwhile
                raise _Cancelled()
            self._count(requests=1)
            retry_after, throttled = None, False
            try:
                response = self._transport.send(self._endpoint.method, self._endpoint.url, body, self._headers,
                                                settings.timeout_s)
            except TransportError as exc:
                if not exc.retryable:  # the same certificate will not verify next time either
                    raise SendStopped(FATAL_STATUS, f"{self._endpoint.name}: {exc}") from None
                problem = f"no answer from {host_of(self._endpoint.url)} ({exc})"
            else:
                if not is_retryable(response.status):
                    if response.status in (200, 400):
                        self._pacer.on_success(events)
                    return response.status, response.body
                throttled = response.status == 429
                if throttled:
                    self._pacer.on_throttled(epoch)
                problem = f"HTTP {response.status}"
                retry_after = retry_after_s(response.headers)
            if attempt == settings.max_attempts:
                raise SendStopped(EXHAUSTED, f"{self._endpoint.name}: gave up after {counted(attempt, 'attempt')}; "
                                             f"last: {problem}")
            paced = throttled and paced_retry_left and retry_after is None
            if retry_after is not None:  # never seen from Mixpanel so far; honoured within our backoff's bounds
                wait_s = min(retry_after, settings.backoff_max_s)
            elif paced:
                # The pacer has just slowed down and spaces the retry itself: a batch's first 429 waits only
                # for it. Sleeping seconds more would hold a request slot idle, and at the end of a partition
                # the whole task. A second 429 for the same batch backs off as Mixpanel advises.
                wait_s, paced_retry_left = 0.0, False
            else:
                wait_s = self.backoff_s(attempt)
            when = "at this task's slowed pace" if paced else f"in {wait_s:.1f} s"
            log.warning("%s attempt %d failed (%s); retrying %s", self._endpoint.name, attempt, problem, when)
            self._count(retries=1)
            self._sleep(wait_s)
        raise AssertionError("unreachable: the loop returns or raises")

    def _count(self, **attempts: int) -> None:
        with self._lock:
            self._attempts += Tally(**attempts)

    def backoff_s(self, attempt: int) -> float:
        """Mixpanel's advice: exponential from 2 s, capped at 60 s, plus 1-5 s of jitter."""
        s = self._settings
        exponential = min(s.backoff_max_s, s.backoff_initial_s * 2 ** (attempt - 1))
        return exponential + self._rng.uniform(s.jitter_min_s, s.jitter_max_s)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare enough to fall back to our own backoff
