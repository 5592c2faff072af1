"""The pacer with a fake clock: no real waiting."""

import pytest

from mp_spark.pacing import DECREASE, Pacer


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
    return Pacer(clock=clock, sleep=clock.sleep, **kwargs)


def test_pacer_does_not_wait_until_throttled() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock)
    for _ in range(10):
        pacer.wait_turn(2000)
        pacer.on_success(2000)
    assert pacer.rate is None and clock.slept == []


def test_first_429_sets_the_rate_just_under_what_got_through() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock)
    for _ in range(10):  # 20,000 events over 2 s: 10,000 events/s
        clock.now += 0.2
        pacer.on_success(2000)
    pacer.on_throttled()
    assert pacer.rate == pytest.approx(10_000 * DECREASE)


def test_a_burst_of_429s_decreases_once() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock, max_rate=1000.0)
    pacer.on_throttled()
    pacer.on_throttled()
    clock.now += 0.5
    pacer.on_throttled()
    assert pacer.rate == pytest.approx(1000 * DECREASE)
    clock.now += 1.0
    pacer.on_throttled()
    assert pacer.rate == pytest.approx(1000 * DECREASE * DECREASE)


def test_success_raises_the_rate_additively_up_to_the_cap() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock, max_rate=1000.0)
    pacer.on_throttled()
    before = pacer.rate
    pacer.on_success(1000)
    assert pacer.rate == pytest.approx(before + 20)
    for _ in range(100):
        pacer.on_success(1000)
    assert pacer.rate == 1000.0


def test_wait_turn_spaces_batches_at_the_rate() -> None:
    clock = FakeClock()
    pacer = make_pacer(clock, max_rate=1000.0, adaptive=False)
    start = clock.now
    for _ in range(5):
        pacer.wait_turn(500)
    assert clock.now - start == pytest.approx(2.0)  # 5 x 500 events at 1000/s: the last leaves at 2 s


def test_429_before_any_success_leaves_an_unpaced_task_unpaced() -> None:
    pacer = make_pacer(FakeClock())
    pacer.on_throttled()
    assert pacer.rate is None


def test_non_adaptive_pacer_ignores_429() -> None:
    pacer = make_pacer(FakeClock(), adaptive=False)
    pacer.on_throttled()
    assert pacer.rate is None
