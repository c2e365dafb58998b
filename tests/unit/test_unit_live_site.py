"""What ``uploaderd top`` computes without a site: rates over a sliding minute, where this
host's daemon answers, and who may read its uploads in flight."""

from __future__ import annotations

import pytest

from uploaderd.observe.live_site import Rates, daemon_url
from uploaderd.observe.metrics import local_client


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rates_difference_the_totals_over_the_last_minute() -> None:
    clock = Clock()
    rates = Rates(window=60.0, clock=clock)
    rates.add("lab", 0, 0)
    assert rates.rate("lab") is None, "one sample is no rate"
    for second in range(1, 91):
        clock.now = float(second)
        # 2 files a second for the first 30 s, then 1 a second; 1 MiB a file.
        files = 2 * min(second, 30) + max(0, second - 30)
        rates.add("lab", files, files * 2**20)
    files_per_second, bytes_per_second = rates.rate("lab") or (0.0, 0.0)
    assert files_per_second == pytest.approx(1.0, abs=0.02), "only the last minute counts"
    assert bytes_per_second == pytest.approx(2**20, rel=0.02)
    assert 59.0 <= rates.reach() <= 61.0
    assert rates.rate("other") is None


def test_totals_that_fall_restart_the_window() -> None:
    """``prune`` deletes uploaded history: the totals drop, which is no negative rate."""
    clock = Clock()
    rates = Rates(clock=clock)
    rates.add("lab", 1000, 10_000)
    clock.now = 1.0
    rates.add("lab", 10, 100)
    assert rates.rate("lab") is None
    clock.now = 3.0
    rates.add("lab", 14, 140)
    assert rates.rate("lab") == (2.0, 20.0)


@pytest.mark.parametrize(
    ("listen", "url"),
    [
        ("127.0.0.1:9464", "http://127.0.0.1:9464"),
        ("0.0.0.0:9464", "http://127.0.0.1:9464"),
        ("[::]:9464", "http://[::1]:9464"),
        ("[::1]:9100", "http://[::1]:9100"),
        (":9464", "http://127.0.0.1:9464"),
        ("localhost:9464", "http://localhost:9464"),
        ("", None),
    ],
)
def test_the_daemon_is_reached_where_metrics_listen_says(listen: str, url: str | None) -> None:
    assert daemon_url(listen) == url


@pytest.mark.parametrize(
    ("client", "local"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.1.2.3", False),
        ("::ffff:10.1.2.3", False),
        ("2001:db8::1", False),
    ],
)
def test_uploads_in_flight_name_files_so_only_this_host_gets_them(client: str, local: bool) -> None:
    assert local_client(client) is local
