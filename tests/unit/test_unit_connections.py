"""The connection budget (uploaderd.ledger.connections) on stand-in connections: never more
than its size, a thread borrowing twice gets the one it holds, a listener lends its own, idle
ones close, a failed open gives its place back, the bell wakes a waiter without one."""

from __future__ import annotations

import itertools
import os
import select
import threading

import pytest

from devstack import wait_for
from uploaderd.ledger.connections import Budget


class FakeConnection:
    numbers = itertools.count(1)

    def __init__(self) -> None:
        self.number = next(self.numbers)
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Opener:
    def __init__(self) -> None:
        self.made: list[FakeConnection] = []
        self.fail = False

    def __call__(self) -> FakeConnection:
        if self.fail:
            raise ConnectionError("down")
        self.made.append(FakeConnection())
        return self.made[-1]


@pytest.fixture
def opener() -> Opener:
    return Opener()


def test_many_threads_never_hold_more_than_the_budget(opener: Opener) -> None:
    budget = Budget(opener, 2)
    lent, most, lock = 0, 0, threading.Lock()

    def borrow() -> None:
        nonlocal lent, most
        for _ in range(200):
            with budget.connection() as connection:
                assert not connection.closed
                with lock:
                    lent += 1
                    most = max(most, lent)
                with lock:
                    lent -= 1

    threads = [threading.Thread(target=borrow) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads), "a thread never got its turn"
    assert most <= 2 and len(opener.made) <= 2 and budget.opened <= 2


def test_a_thread_past_the_budget_waits_its_turn(opener: Opener) -> None:
    budget = Budget(opener, 2)
    release = threading.Event()
    holding: list[FakeConnection] = []

    def hold() -> None:
        with budget.connection() as connection:
            holding.append(connection)
            release.wait(30)

    threads = [threading.Thread(target=hold) for _ in range(3)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(holding) == 2 and budget._turns, message="two hold, one waits")
    assert budget.opened == 2
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(holding) == 3 and set(holding) <= set(opener.made) and len(opener.made) == 2


def test_a_thread_that_holds_one_gets_it_again_at_a_budget_of_one(opener: Opener) -> None:
    budget = Budget(opener, 1)
    with budget.connection() as outer, budget.connection() as inner:
        assert inner is outer
    assert len(opener.made) == 1


def test_the_listener_lends_its_connection_to_a_thread_that_needs_one(opener: Opener) -> None:
    budget = Budget(opener, 2)
    woken = threading.Event()
    got: list[FakeConnection] = []

    def listen() -> None:
        with budget.listening() as (connection, lend):
            assert connection is not None
            got.append(connection)
            ready, _, _ = select.select([lend], [], [], 30)
            if ready:
                woken.set()

    listener = threading.Thread(target=listen)
    listener.start()
    wait_for(lambda: got, message="the listener waits")
    with budget.connection() as borrowed:  # a free place remains, yet the idle one is lent
        assert borrowed is got[0]
    listener.join(10)
    assert woken.is_set() and len(opener.made) == 1


def test_a_connection_unused_for_a_while_is_closed() -> None:
    now = [0.0]
    opener = Opener()
    budget = Budget(opener, 2, idle_close=10.0, clock=lambda: now[0])
    with budget.connection() as first:
        pass
    now[0] = 5.0
    with budget.connection() as again:
        assert again is first and not first.closed
    now[0] = 16.0  # 11 s unused
    with budget.listening() as (connection, _):
        assert connection is not None
        assert first.closed and connection is not first
    budget.close()
    assert connection.closed and budget.opened == 0


def test_a_failed_open_gives_its_place_back(opener: Opener) -> None:
    budget = Budget(opener, 1)
    opener.fail = True
    with pytest.raises(ConnectionError), budget.connection():
        pass
    opener.fail = False
    with budget.connection() as connection:
        assert not connection.closed
    assert budget.opened == 1


def test_a_closed_connection_is_replaced_and_a_waiting_thread_opens_it(opener: Opener) -> None:
    budget = Budget(opener, 1)
    handed: list[FakeConnection] = []
    holding = threading.Event()

    def waiter() -> None:
        holding.wait(10)
        with budget.connection() as connection:
            handed.append(connection)

    thread = threading.Thread(target=waiter)
    thread.start()
    with budget.connection() as broken:
        holding.set()
        wait_for(lambda: budget._turns, message="the other thread waits its turn")
        broken.close()  # what a lost connection looks like
    thread.join(10)
    assert handed and handed[0] is not broken and not handed[0].closed


def test_close_closes_what_is_lent_when_it_comes_back(opener: Opener) -> None:
    budget = Budget(opener, 2)
    with budget.connection() as lent:
        budget.close()
        assert not lent.closed
    assert lent.closed and budget.opened == 0
    with budget.connection() as fresh:
        assert fresh is not lent


def test_a_budget_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Budget(Opener(), 0)


def test_a_listener_waits_without_a_connection_rather_than_open_another(
    opener: Opener,
) -> None:
    budget = Budget(opener, 2)
    with budget.listening() as (first, _):  # nothing open yet: the listener opens one
        assert first is not None
    returned = threading.Event()
    lent = threading.Event()

    def borrow() -> None:
        with budget.connection():
            lent.set()
            returned.wait(10)

    thread = threading.Thread(target=borrow)
    thread.start()
    assert lent.wait(10)
    with budget.listening() as (second, wake):
        assert second is None
        returned.set()  # the borrower gives it back: the bare listener is woken
        ready, _, _ = select.select([wake], [], [], 10)
        assert ready == [wake]
    thread.join(10)
    with budget.listening() as (third, _):
        assert third is first
    assert len(opener.made) == 1


def test_the_bell_wakes_a_waiter_that_holds_no_connection(opener: Opener) -> None:
    budget = Budget(opener, 1)
    budget.ring()  # nobody waits yet: nothing to hear
    assert budget.wait_for_ring(0.05) is False  # nothing rang since: the timeout
    heard: list[bool] = []
    waiter = threading.Thread(target=lambda: heard.append(budget.wait_for_ring(10)))
    waiter.start()
    budget.ring()
    waiter.join(10)
    assert heard == [True]
    assert budget.wait_for_ring(0) is False  # heard once: the bell is quiet again
    assert opener.made == []  # waiting took no connection


def test_the_bell_waiter_also_wakes_for_other_descriptors(opener: Opener) -> None:
    budget = Budget(opener, 1)
    read, write = os.pipe()
    os.write(write, b"x")
    assert budget.wait_for_ring(10, [read]) is False  # woken, but not by the bell
    os.close(read)
    os.close(write)
    for _ in range(10_000):  # a ring that finds the pipe full is not lost, nor an error
        budget.ring()
    assert budget.wait_for_ring(0) is True


def _borrow(budget: Budget[FakeConnection]) -> FakeConnection:
    with budget.connection() as connection:
        return connection
