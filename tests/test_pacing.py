"""The pacer with a fake clock: no real waiting."""

import pytest

from mp_spark.pacing import DECREASE, PROBE_PER_BATCH, RECOVER_PER_BATCH, Pacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make_pacer(clock: FakeClock, **kwargs: object) -> Pacer:
    return Pacer(share=10_000.0, clock=clock, sleep=clock.sleep, **kwargs)


def test_until_the_first_429_batches_leave_unpaced() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock)
    for _ in range(10):
        pacer.wait_turn(2000)  # 20,000 events at once: twice the share, and no wait
        pacer.on_success(2000)
    assert pacer.rate is None and clock.slept == []


def test_first_429_drops_the_rate_just_under_the_share() -> None:
    pacer = make_pacer(FakeClock())
    pacer.on_throttled(pacer.wait_turn(2000))
    assert pacer.rate == pytest.approx(10_000 * DECREASE)
    pacer.on_success(2000)
    assert pacer.rate == pytest.approx(10_000 * DECREASE + 2000 * RECOVER_PER_BATCH)  # additive now


def test_429s_of_requests_sent_before_a_cut_do_not_cut_again() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock)
    pacer.on_throttled(0)  # the first 429: 9,300 events/s
    in_flight = [pacer.wait_turn(100) for _ in range(3)]
    for epoch in in_flight:
        pacer.on_throttled(epoch)
    assert pacer.rate == pytest.approx(10_000 * DECREASE**2)
    pacer.on_throttled(pacer.wait_turn(100))  # sent after the cut: a new congestion
    assert pacer.rate == pytest.approx(10_000 * DECREASE**3)


def test_after_a_cut_the_rate_recovers_fast_then_probes_slowly_up_to_the_cap() -> None:
    pacer = make_pacer(FakeClock(), max_rate=1000.0)
    assert pacer.rate == 1000.0  # a cap below the share: start at the cap
    pacer.on_throttled(0)  # the first 429: just under the share, so still the cap
    pacer.on_throttled(1)  # a 429 at 1000 events/s
    assert pacer.rate == pytest.approx(1000 * DECREASE)
    pacer.on_success(100)
    assert pacer.rate == pytest.approx(1000 * DECREASE + 100 * RECOVER_PER_BATCH)  # well below the last cut
    while pacer.rate < 970:
        pacer.on_success(100)
    before = pacer.rate
    pacer.on_success(100)
    assert pacer.rate == pytest.approx(min(1000.0, before + 100 * PROBE_PER_BATCH))  # near it: probing
    for _ in range(1000):
        pacer.on_success(100)
    assert pacer.rate == 1000.0


def test_wait_turn_spaces_batches_at_the_rate() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock, max_rate=1000.0, adaptive=False)
    start = clock.now
    for _ in range(5):
        pacer.wait_turn(500)
    assert clock.now - start == pytest.approx(2.0)  # 5 x 500 events at 1000/s: the last leaves at 2 s


def test_non_adaptive_pacer_ignores_429() -> None:
    pacer = make_pacer(FakeClock(), adaptive=False)
    pacer.on_throttled(0)
    assert pacer.rate is None


def test_a_task_starts_where_the_previous_task_of_its_run_ended() -> None:
    first = make_pacer(FakeClock(), run_id="run-a")
    first.on_throttled(0)
    first.on_success(2000)
    following = make_pacer(FakeClock(), run_id="run-a")
    assert following.rate == first.rate  # not unpaced: it would overshoot again
    following.on_success(2000)
    assert following.rate == pytest.approx(first.rate + 2000 * RECOVER_PER_BATCH)  # still recovering
    assert make_pacer(FakeClock(), run_id="run-b").rate is None  # another run starts afresh
