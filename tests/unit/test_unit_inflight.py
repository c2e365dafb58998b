"""The in-flight memory budget: uploads wait for room instead of adding up without bound."""

from __future__ import annotations

import threading

from devstack import wait_for
from uploaderd.policy.inflight import Budget


def test_an_upload_that_does_not_fit_waits_until_another_gives_its_share_back() -> None:
    budget = Budget(100)
    second_in = threading.Event()

    def second() -> None:
        with budget.hold(60):
            second_in.set()

    with budget.hold(60):
        waiter = threading.Thread(target=second)
        waiter.start()
        assert not second_in.wait(0.2), "60 + 60 bytes exceed the budget of 100"
    wait_for(second_in.is_set, message="the second upload gets its share")
    waiter.join(5)
    assert budget.held() == 0


def test_a_file_larger_than_the_budget_takes_all_of_it_and_still_runs() -> None:
    budget = Budget(100)
    with budget.hold(10_000):
        assert budget.held() == 100
    assert budget.held() == 0
