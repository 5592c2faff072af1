"""Pacing for one task's sends: TCP's congestion control, applied to events per second.

Mixpanel's rate limit is per project, shared by every task of the job. Until the first 429 a task
sends as fast as its requests in flight allow (or at its share of `mixpanel.max_events_per_second`),
so a project that is not near its limit is never held back; the job's first burst is at most its
`max_in_flight` batches. The first 429 drops the task just under its share of the project's limit.
After that, each 429 keeps 93% of the rate; on success the rate climbs back quickly to near where
the last 429 came, then probes beyond it slowly (as TCP CUBIC does), so the tasks together spend
most of their time just under the project's limit instead of retrying in lockstep. (A project
granted a higher limit says so with rate_limit_events_per_second.)

Spark reuses a Python worker for the next task, so a task leaves its pacing state to the next
task of the same run on that worker, which starts there: later waves of tasks do not overshoot.
(The same holds for a stream's micro-batches, which share a run id, while their workers live: Spark
ends a Python worker idle for about a minute.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

DECREASE = 0.93  # share of the rate kept after a 429
RECOVER_PER_BATCH = 0.05  # additive step per success while below the rate of the last 429 ...
PROBE_PER_BATCH = 0.006  # ... and once back near it, where the next 429 is likely (as in TCP CUBIC)
NEAR_LAST_CUT = 0.97
MIN_RATE = 50.0  # events/s: never stall completely

# run id -> (rate, throttled yet, rate at the last 429) as this worker's last task of that run left them
_left_by_runs: dict[str, tuple[float | None, bool, float]] = {}


class Pacer:
    """Spaces a task's batches so they leave at most at `rate` events per second (None: no limit)."""

    def __init__(
        self,
        *,
        share: float,
        max_rate: float | None = None,
        adaptive: bool = True,
        run_id: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        fresh = (max_rate, False, 0.0)
        self.rate, self._throttled, self._rate_at_last_cut = _left_by_runs.get(run_id, fresh) if adaptive else fresh
        self._share = share  # this task's share of the project's limit
        self._run_id = run_id
        self._max_rate = max_rate
        self._adaptive = adaptive
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_free = 0.0
        self._epoch = 0  # bumped by each decrease

    def wait_turn(self, events: int) -> int:
        """Block until a batch of `events` may leave (in arrival order); returns the rate's epoch."""
        with self._lock:
            epoch = self._epoch
            if self.rate is None:
                return epoch
            now = self._clock()
            start = max(now, self._next_free)
            self._next_free = start + events / self.rate
        if start > now:
            self._sleep(start - now)
        return epoch

    def on_success(self, events: int) -> None:
        with self._lock:
            if self._throttled:  # before the first 429 the rate is the cap, or none
                recovering = self.rate < NEAR_LAST_CUT * self._rate_at_last_cut
                self._set_rate(self.rate + events * (RECOVER_PER_BATCH if recovering else PROBE_PER_BATCH))

    def _set_rate(self, rate: float) -> None:
        self.rate = min(self._max_rate or float("inf"), max(MIN_RATE, rate))  # the cap wins over the floor
        if self._run_id:
            _left_by_runs[self._run_id] = (self.rate, self._throttled, self._rate_at_last_cut)

    def on_throttled(self, epoch: int) -> None:
        """A 429 for a request sent in `epoch`: slow down, unless the rate was already cut since.

        Requests in flight when the rate was cut were sent at the old rate; their 429s are the
        same congestion, not a new one (TCP's fast recovery makes the same distinction).
        """
        if not self._adaptive:
            return
        with self._lock:
            if epoch != self._epoch:
                return
            self._rate_at_last_cut = self.rate if self._throttled else self._share
            self._throttled = True
            self._set_rate(self._rate_at_last_cut * DECREASE)
            self._epoch += 1
            log.info("429 from Mixpanel: pacing this task at %.0f events/s", self.rate)
