"""bench/throughput.py: the pure parts of the sustained mode (percentiles, the schedule, the
command line) and the feeder's pacing on a short feed."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from bench.throughput import (
    Feeder,
    Sustained,
    due_offset,
    latencies_of,
    parse_args,
    percentile,
    plan_of,
    reproduce_command,
)


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100 .. 1, unsorted on purpose
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([0.3, 0.1, 0.2], 0.5) == 0.2
    assert percentile([7.0], 0.99) == 7.0


def test_a_p99_of_few_values_is_a_value_some_file_had() -> None:
    values = [0.1, 0.2, 5.0]  # no interpolation towards the outlier: it is the p99
    assert percentile(values, 0.99) == 5.0
    assert latencies_of(values) == latencies_of([5.0, 0.1, 0.2])
    assert (latencies_of(values).p50, latencies_of(values).max) == (0.2, 5.0)


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_percentile_refuses_a_fraction_outside_0_1(fraction: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], fraction)


def test_percentile_refuses_no_values() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_the_schedule_does_not_drift() -> None:
    # Adding a period of 1/3 s 3,000 times drifts by rounding; the index-based offset is exact.
    accumulated = 0.0
    for _ in range(3000):
        accumulated += 1 / 3
    assert accumulated != 1000.0
    assert due_offset(3000, 3) == 1000.0
    assert due_offset(6000, 100) == 60.0
    assert [due_offset(i, 4) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_a_sustained_feed_is_rate_times_seconds_files() -> None:
    feed = Sustained(rate=100, size=65536, seconds=60)
    assert (feed.workload.count, feed.workload.size) == (6000, 65536)
    assert feed.describe() == "100/s x 64KiB for 60s"


def test_the_feeder_renames_every_file_no_sooner_than_its_schedule(tmp_path: Path) -> None:
    target = tmp_path / "watched"
    target.mkdir()
    feed = Sustained(rate=200, size=1024, seconds=0.1)  # 20 files over 95 ms
    feeder = Feeder(tmp_path / "staging", target, feed, seed=1)
    started = time.time()
    feeder.start()
    deadline = time.monotonic() + 10
    while feeder.running(0.05):
        assert time.monotonic() < deadline, "the feeder did not finish 20 files in 10 s"
    assert feeder.error is None
    assert sorted(p.name for p in target.iterdir()) == sorted(feeder.renamed)
    assert len(feeder.renamed) == 20
    assert not list((tmp_path / "staging").iterdir())
    assert all(p.stat().st_size == 1024 for p in target.iterdir())
    times = list(feeder.renamed.values())
    assert times == sorted(times)
    assert times[-1] - started >= due_offset(19, 200) - 0.001  # paced, not all at once
    assert feeder.late >= 0


def test_the_sustained_mode_is_off_unless_a_rate_is_given() -> None:
    assert plan_of(parse_args([])).sustained is None
    plan = plan_of(parse_args(["--sustained-rate", "100", "--sustained-size", "64KiB"]))
    assert plan.sustained == Sustained(100, 65536, 60)


def test_the_reproduce_command_measures_the_same() -> None:
    args = parse_args(
        ["--small", "0", "--sustained-rate", "50", "--sustained-seconds", "10", "--workers", "8"]
    )
    argv = shlex.split(reproduce_command(args))
    again = parse_args(argv[argv.index("bench/throughput.py") + 1 :])
    assert plan_of(again) == plan_of(args)


@pytest.mark.parametrize(
    "argv",
    [["--sustained-rate", "-1"], ["--sustained-rate", "0.5", "--sustained-seconds", "1"]],
)
def test_a_feed_of_no_file_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
