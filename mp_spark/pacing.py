"""Pacing for one task's sends: additive increase, multiplicative decrease on 429.

Mixpanel's rate limit is per project, shared by every task of the job. Each task starts unpaced
(or at its share of `mixpanel.max_events_per_second`); the first 429 sets its rate just under
what it was getting through, and from then on it creeps up on success and steps down on 429.
Tasks converge on fair shares of the limit instead of retrying in lockstep.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

DECREASE = 0.9  # share of the rate kept after a 429
INCREASE_PER_BATCH = 0.02  # additive step after each success, as a share of the batch's events
MIN_RATE = 50.0  # events/s: never stall completely
WINDOW_S = 5.0  # how far back the delivered rate is measured


class Pacer:
    """Spaces a task's batches so they leave at most at `rate` events per second (None: no limit)."""

    def __init__(
        self,
        *,
        max_rate: float | None = None,
        adaptive: bool = True,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.rate = max_rate
        self._max_rate = max_rate
        self._adaptive = adaptive
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_free = 0.0
        self._started = clock()
        self._last_decrease = float("-inf")
        self._delivered: deque[tuple[float, int]] = deque()

    def wait_turn(self, events: int) -> None:
        """Block until a batch of `events` may leave; reservations are taken in arrival order."""
        with self._lock:
            if self.rate is None:
                return
            now = self._clock()
            start = max(now, self._next_free)
            self._next_free = start + events / self.rate
        if start > now:
            self._sleep(start - now)

    def on_success(self, events: int) -> None:
        with self._lock:
            now = self._clock()
            self._delivered.append((now, events))
            while self._delivered and self._delivered[0][0] < now - WINDOW_S:
                self._delivered.popleft()
            if self.rate is not None and self._adaptive:
                self.rate += events * INCREASE_PER_BATCH
                if self._max_rate is not None:
                    self.rate = min(self.rate, self._max_rate)

    def on_throttled(self) -> None:
        """A 429: slow down, at most once a second (a burst of 429s is one congestion event)."""
        if not self._adaptive:
            return
        with self._lock:
            now = self._clock()
            if now - self._last_decrease < 1.0:
                return
            self._last_decrease = now
            span = min(WINDOW_S, max(now - self._started, 1.0))
            delivered = sum(n for _, n in self._delivered) / span if self._delivered else None
            if delivered is None and self.rate is None:
                return  # nothing measured yet: the retry's backoff alone has to do
            candidates = [r for r in (self.rate, delivered) if r is not None]
            self.rate = max(MIN_RATE, min(candidates) * DECREASE)
