"""The destination breaker with a fake clock."""

from __future__ import annotations

from uploaderd.policy.health import Breaker


def make() -> tuple[Breaker, list[float]]:
    now = [0.0]
    return Breaker(threshold=3, first_pause=30, max_pause=100, clock=lambda: now[0]), now


def test_trips_after_threshold_failures_in_a_row() -> None:
    breaker, _ = make()
    assert [breaker.record_failure("x") for _ in range(3)] == [None, None, 30]
    assert breaker.paused()


def test_failures_of_uploads_already_in_flight_do_not_lengthen_the_pause() -> None:
    breaker, now = make()
    for _ in range(3):
        breaker.record_failure("x")
    assert [breaker.record_failure("late") for _ in range(5)] == [None] * 5
    assert breaker.paused_until == 30
    now[0] = 31.0
    assert breaker.probing() and not breaker.paused()
    assert breaker.record_failure("probe failed") == 60, "a failed probe doubles the pause"
    now[0] = 200.0
    assert breaker.record_failure("probe failed again") == 100, "capped at max_pause"


def test_a_success_closes_the_breaker() -> None:
    breaker, now = make()
    for _ in range(3):
        breaker.record_failure("x")
    now[0] = 31.0
    assert breaker.record_success() is True
    assert not breaker.probing() and breaker.failures == 0
    assert breaker.record_success() is False, "nothing to resume"
    assert [breaker.record_failure("x") for _ in range(3)] == [None, None, 30]
