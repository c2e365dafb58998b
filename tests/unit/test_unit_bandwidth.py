"""The bandwidth limiter with a fake clock: no test here waits for real time."""

from __future__ import annotations

from uploaderd.policy.bandwidth import Limiter


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_burst_within_one_second_passes_then_the_rate_holds() -> None:
    time = FakeTime()
    limiter = Limiter(1000, clock=time.clock, sleep=time.sleep)
    limiter.consume(600)
    limiter.consume(400)
    assert time.slept == []
    limiter.consume(500)
    assert time.slept == [0.5]
    for _ in range(10):
        limiter.consume(1000)
    assert time.now == 10.5, "10.5 kB at 1 kB/s after the first second's allowance"


def test_idle_time_refills_only_up_to_one_second() -> None:
    time = FakeTime()
    limiter = Limiter(100, clock=time.clock, sleep=time.sleep)
    limiter.consume(100)
    time.now += 60  # a long idle spell
    limiter.consume(100)
    limiter.consume(100)
    assert time.slept == [1.0]


def test_a_chunk_larger_than_the_bucket_waits_its_share() -> None:
    time = FakeTime()
    limiter = Limiter(1000, clock=time.clock, sleep=time.sleep)
    limiter.consume(5000)
    assert time.slept == [4.0]
