"""The pure policies: settling, retry backoff, session grouping, upload windows, units."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from uploaderd.policy.retry import Backoff, RetryPolicy, backoff_delay, next_attempt_in
from uploaderd.policy.sessions import group_key
from uploaderd.policy.settle import MTIME_MAX, MTIME_MIN, SettleTracker, Signature
from uploaderd.policy.units import format_bytes, parse_duration, parse_size
from uploaderd.policy.windows import Window, in_any_window

# --- settle ------------------------------------------------------------------------------------

NOW = 1_750_000_000.0  # wall clock, seconds
OLD_NS = int((NOW - 3600) * 1e9)  # an mtime an hour before NOW


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocks() -> tuple[Clock, Clock]:
    return Clock(1000.0), Clock(NOW)


def tracker(clocks: tuple[Clock, Clock], settle: float = 10.0) -> SettleTracker[str]:
    monotonic, wall = clocks
    return SettleTracker(settle, monotonic=monotonic, wall=wall)


def advance(clocks: tuple[Clock, Clock], seconds: float) -> None:
    for clock in clocks:
        clock.now += seconds


def fresh(clocks: tuple[Clock, Clock], size: int = 100, inode: int = 7) -> Signature:
    """The signature of a file just written: its mtime is the wall clock's now."""
    return Signature(size, int(clocks[1].now * 1e9), inode)


def test_fresh_file_completes_only_after_holding_for_settle(clocks: tuple[Clock, Clock]) -> None:
    t = tracker(clocks)
    sig = fresh(clocks)
    assert t.observe("a", sig, "watch") is None
    assert "a" in t
    advance(clocks, 9.9)
    assert t.observe("a", sig, "watch") is None
    assert len(t) == 1
    advance(clocks, 0.1)
    assert t.observe("a", sig, "watch") == "watch"
    assert "a" not in t
    assert len(t) == 0


def test_first_observation_never_completes_even_after_a_long_wait(
    clocks: tuple[Clock, Clock],
) -> None:
    t = tracker(clocks)
    advance(clocks, 3600)
    assert t.observe("a", Signature(1, int((NOW - 86400) * 1e9), 1), "scan") is None


def test_a_change_resets_the_settle_time(clocks: tuple[Clock, Clock]) -> None:
    t = tracker(clocks)
    assert t.observe("a", fresh(clocks), "watch") is None
    advance(clocks, 8)
    grown = fresh(clocks, size=200)  # written again: bigger, newer mtime
    assert t.observe("a", grown, "watch") is None  # changed: the clock starts again
    advance(clocks, 8)  # 16s since first seen, only 8s since the change
    assert t.observe("a", grown, "watch") is None
    advance(clocks, 2)
    assert t.observe("a", grown, "watch") == "watch"


def test_old_mtime_completes_on_the_second_unchanged_observation(
    clocks: tuple[Clock, Clock],
) -> None:
    t = tracker(clocks)
    old = Signature(100, int((NOW - 3600) * 1e9), 7)  # written an hour ago
    assert t.observe("a", old, "scan") is None
    assert t.observe("a", old, "scan") == "scan"  # no clock advance needed


@pytest.mark.parametrize(
    "changed",
    [Signature(101, OLD_NS, 7), Signature(100, OLD_NS + 1, 7), Signature(100, OLD_NS, 8)],
    ids=["size", "mtime", "inode"],
)
def test_any_field_change_needs_another_observation(
    clocks: tuple[Clock, Clock], changed: Signature
) -> None:
    t = tracker(clocks)
    assert t.observe("a", Signature(100, OLD_NS, 7), "scan") is None
    assert t.observe("a", changed, "scan") is None  # not the same version: look again
    assert t.observe("a", changed, "scan") == "scan"


def test_mtime_just_younger_than_settle_waits(clocks: tuple[Clock, Clock]) -> None:
    t = tracker(clocks)
    sig = Signature(100, int((NOW - 9) * 1e9), 7)
    assert t.observe("a", sig, "scan") is None
    assert t.observe("a", sig, "scan") is None
    advance(clocks, 1)  # now 10s old by mtime, 1s held
    assert t.observe("a", sig, "scan") == "scan"


def test_source_is_the_first_that_saw_the_file(clocks: tuple[Clock, Clock]) -> None:
    t = tracker(clocks)
    assert t.observe("a", fresh(clocks), "watch") is None
    advance(clocks, 5)
    grown = fresh(clocks, size=200)
    assert t.observe("a", grown, "scan") is None  # changed, seen by scan
    advance(clocks, 10)
    assert t.observe("a", grown, "scan") == "watch"


def test_forget_drops_the_file(clocks: tuple[Clock, Clock]) -> None:
    t = tracker(clocks)
    sig = fresh(clocks)
    t.observe("a", sig, "watch")
    t.observe("b", sig, "watch")
    assert len(t) == 2 and "a" in t
    t.forget("a")
    t.forget("never-seen")  # no error
    assert len(t) == 1 and "a" not in t and "b" in t
    advance(clocks, 60)
    # Seen again after forget: starts over, and from the new source.
    assert t.observe("a", sig, "scan") is None
    assert t.observe("a", sig, "scan") == "scan"


def test_keys_are_independent(clocks: tuple[Clock, Clock]) -> None:
    t = tracker(clocks)
    a = fresh(clocks)
    t.observe("a", a, "watch")
    advance(clocks, 10)
    b = fresh(clocks)
    t.observe("b", b, "watch")
    assert t.observe("a", a, "watch") == "watch"
    assert t.observe("b", b, "watch") is None


def test_zero_settle_completes_on_the_second_observation(clocks: tuple[Clock, Clock]) -> None:
    t = tracker(clocks, settle=0)
    assert t.observe("a", fresh(clocks), "watch") is None
    assert t.observe("a", fresh(clocks), "watch") == "watch"


# --- retry -------------------------------------------------------------------------------------

NO_JITTER = Backoff(initial=30.0, max=3600.0, multiplier=2.0, jitter=False)


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    delays = [backoff_delay(attempt, NO_JITTER) for attempt in range(1, 10)]
    assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_backoff_with_other_multiplier() -> None:
    b = Backoff(initial=10.0, max=1000.0, multiplier=3.0, jitter=False)
    assert [backoff_delay(a, b) for a in (1, 2, 3, 4, 5)] == [10, 30, 90, 270, 810]
    assert backoff_delay(6, b) == 1000


def test_backoff_stays_capped_for_huge_attempt_numbers() -> None:
    assert backoff_delay(5000, NO_JITTER) == 3600


def test_jitter_bounds_with_injected_rand() -> None:
    b = Backoff(initial=30.0, max=3600.0, multiplier=2.0, jitter=True)
    assert backoff_delay(1, b, rand=lambda: 0.0) == 15.0
    assert backoff_delay(1, b, rand=lambda: 1.0) == 30.0
    assert backoff_delay(3, b, rand=lambda: 0.0) == 60.0
    assert backoff_delay(3, b, rand=lambda: 1.0) == 120.0
    assert backoff_delay(3, b, rand=lambda: 0.5) == 90.0
    assert backoff_delay(20, b, rand=lambda: 0.0) == 1800.0
    assert backoff_delay(20, b, rand=lambda: 1.0) == 3600.0


def test_no_jitter_never_calls_rand() -> None:
    def rand() -> float:
        raise AssertionError("rand called without jitter")

    assert backoff_delay(2, NO_JITTER, rand=rand) == 60


def test_next_attempt_in_stops_at_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3, backoff=NO_JITTER)
    assert next_attempt_in(1, policy) == 30
    assert next_attempt_in(2, policy) == 60
    assert next_attempt_in(3, policy) is None
    assert next_attempt_in(4, policy) is None
    assert next_attempt_in(1, RetryPolicy(max_attempts=1, backoff=NO_JITTER)) is None


def test_next_attempt_in_passes_rand_through() -> None:
    policy = RetryPolicy(max_attempts=5, backoff=Backoff(30.0, 3600.0, 2.0, True))
    assert next_attempt_in(2, policy, rand=lambda: 0.0) == 30.0
    assert next_attempt_in(2, policy, rand=lambda: 1.0) == 60.0


# --- sessions ----------------------------------------------------------------------------------


def test_group_key_none_is_one_rolling_session() -> None:
    assert group_key("none", "run1/a.tif", 0) == ""
    assert group_key("none", "a.tif", 10**18) == ""


def test_group_key_top_dir() -> None:
    assert group_key("top_dir", "run1/a.tif", 0) == "run1"
    assert group_key("top_dir", "run1/sub/deep/a.tif", 0) == "run1"
    assert group_key("top_dir", "run 2/ü.tif", 0) == "run 2"
    assert group_key("top_dir", "a.tif", 0) == ""  # files at the top


def test_group_key_day_is_the_utc_day_of_the_mtime() -> None:
    last_second_of_2024 = int(datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()) * 10**9
    assert group_key("day", "run1/a.tif", last_second_of_2024) == "2024-12-31"
    assert group_key("day", "run1/a.tif", last_second_of_2024 + 10**9) == "2025-01-01"


def test_group_key_day_of_an_mtime_out_of_range_is_undated() -> None:
    assert group_key("day", "run1/a.tif", MTIME_MAX) == "undated"
    assert group_key("day", "run1/a.tif", MTIME_MIN) == "undated"


# --- signatures --------------------------------------------------------------------------------


def stat_of(size: int = 1, mtime: int = 5, ino: int = 7, ctime: int = 9) -> os.stat_result:
    # mode, ino, dev, nlink, uid, gid, size, 3 times in s, 3 as floats, atime/mtime/ctime in ns
    return os.stat_result(
        (0o100644, ino, 1, 1, 0, 0, size, 0, 0, 0, 0.0, 0.0, 0.0, 0, mtime, ctime)
    )


def test_a_signature_holds_the_ctime_and_clamps_mtimes_to_bigint() -> None:
    assert Signature.of(stat_of()) == Signature(1, 5, 7, 9)
    assert Signature.of(stat_of(ctime=10)) != Signature.of(stat_of()), "a write is a new version"
    assert Signature.of(stat_of(mtime=10**19)).mtime_ns == MTIME_MAX == 2**63 - 1
    assert Signature.of(stat_of(mtime=253_402_300_800 * 10**9)).mtime_ns == MTIME_MAX
    assert Signature.of(stat_of(mtime=-(10**19))).mtime_ns == MTIME_MIN


def test_a_signature_without_a_ctime_matches_any_ctime() -> None:
    recorded_before_0008 = Signature(1, 5, 7)
    assert recorded_before_0008 == Signature(1, 5, 7, 9)
    assert recorded_before_0008 == Signature(1, 5, 7, 10)
    assert hash(recorded_before_0008) == hash(Signature(1, 5, 7, 9))
    assert recorded_before_0008 != Signature(2, 5, 7, 9)


# --- windows -----------------------------------------------------------------------------------


# 2025-06-02 is a Monday.
def at(day: int, hour: int, minute: int = 0) -> datetime:
    """A moment on day 0 = Monday 2025-06-02 ... 6 = Sunday 2025-06-08."""
    return datetime(2025, 6, 2 + day, hour, minute)


MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


def test_parse_days_and_overnight_range() -> None:
    w = Window.parse("Mon-Fri 19:00-07:00")
    assert w.days == frozenset({MON, TUE, WED, THU, FRI})
    assert (w.start.hour, w.start.minute, w.end.hour, w.end.minute) == (19, 0, 7, 0)


def test_parse_whole_days() -> None:
    w = Window.parse("Sat-Sun")
    assert w.days == frozenset({SAT, SUN})
    assert w.start == w.end


def test_parse_time_only_means_every_day() -> None:
    w = Window.parse("22:00-06:00")
    assert w.days == frozenset(range(7))
    assert (w.start.hour, w.end.hour) == (22, 6)


def test_parse_day_range_that_wraps_the_week() -> None:
    assert Window.parse("Fri-Mon").days == frozenset({FRI, SAT, SUN, MON})


def test_parse_day_lists_and_case() -> None:
    assert Window.parse("mon,Wed,FRI-sat").days == frozenset({MON, WED, FRI, SAT})


def test_parse_whole_day_as_00_to_24() -> None:
    w = Window.parse("Tue 00:00-24:00")
    assert w.contains(at(TUE, 0))
    assert w.contains(at(TUE, 23, 59))
    assert not w.contains(at(WED, 0))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "'': expected e.g. 'Mon-Fri 19:00-07:00', 'Sat-Sun' or '22:00-06:00'"),
        ("Funday", "'Funday': expected e.g. 'Mon-Fri 19:00-07:00', 'Sat-Sun' or '22:00-06:00'"),
        (
            "Mon-Fri 19:00",
            "'Mon-Fri 19:00': expected e.g. 'Mon-Fri 19:00-07:00', 'Sat-Sun' or '22:00-06:00'",
        ),
        (
            "19:00-07:00 Mon",
            "'19:00-07:00 Mon': expected e.g. 'Mon-Fri 19:00-07:00', 'Sat-Sun' or '22:00-06:00'",
        ),
        ("Mon-Xyz", "'Mon-Xyz': days are Mon, Tue, Wed, Thu, Fri, Sat, Sun"),
        ("Mon 25:00-07:00", "'25:00' is not a time of day"),
        ("Mon 19:60-07:00", "'19:60' is not a time of day"),
        ("Mon 09:00-24:30", "'24:30' is not a time of day"),
        (
            "Mon 09:00-09:00",
            "'Mon 09:00-09:00': the range starts where it ends; use 00:00-24:00 for whole days",
        ),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Window.parse(text)
    assert str(caught.value) == message


def test_overnight_window_across_midnight() -> None:
    w = Window.parse("Mon-Fri 19:00-07:00")
    assert w.contains(at(FRI, 23))  # Friday night
    assert w.contains(at(SAT, 6, 59))  # the tail of Friday's window
    assert not w.contains(at(SAT, 7))  # end is exclusive
    assert not w.contains(at(SAT, 8))
    assert not w.contains(at(SAT, 23))  # Saturday night is not in Mon-Fri
    assert not w.contains(at(MON, 6, 59))  # Sunday night is not in Mon-Fri
    assert w.contains(at(MON, 19))  # start is inclusive
    assert not w.contains(at(MON, 18, 59))
    assert not w.contains(at(WED, 12))
    assert w.contains(at(TUE, 3))  # the tail of Monday's window


def test_daytime_window() -> None:
    w = Window.parse("Mon 09:00-17:00")
    assert w.contains(at(MON, 9))
    assert w.contains(at(MON, 16, 59))
    assert not w.contains(at(MON, 17))
    assert not w.contains(at(MON, 8, 59))
    assert not w.contains(at(TUE, 10))


def test_whole_day_window() -> None:
    w = Window.parse("Sat-Sun")
    assert w.contains(at(SAT, 0))
    assert w.contains(at(SUN, 23, 59))
    assert not w.contains(at(FRI, 23, 59))
    assert not w.contains(at(MON, 0))


def test_every_day_overnight_window() -> None:
    w = Window.parse("22:00-06:00")
    assert w.contains(at(WED, 22))
    assert w.contains(at(THU, 5, 59))
    assert not w.contains(at(THU, 6))
    assert not w.contains(at(THU, 21, 59))


def test_in_any_window() -> None:
    windows = [Window.parse("Mon-Fri 19:00-07:00"), Window.parse("Sat-Sun")]
    assert in_any_window([], at(WED, 12))  # no windows: any time
    assert in_any_window(windows, at(SAT, 12))
    assert in_any_window(windows, at(TUE, 20))
    assert not in_any_window(windows, at(TUE, 12))


# --- units -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("10", 10.0),
        (" 2m ", 120.0),
        ("1 h", 3600.0),
        (45, 45.0),
        (1.5, 1.5),
        (0, 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["1w", "", "-1", "s", "1h30m", "1H", None, [1]])
def test_parse_duration_refuses(value: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert str(caught.value) == (
        f"expected a duration such as 30s, 15m, 1h, 1d or a number of seconds, got {value!r}"
    )


def test_parse_duration_refuses_negative_and_bool() -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(-1)
    assert str(caught.value) == "a duration cannot be negative"
    with pytest.raises(ValueError) as caught:
        parse_duration(True)
    assert str(caught.value) == (
        "expected a duration such as 30s, 15m, 1h, 1d or a number of seconds"
    )


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (512, 512),
        ("512", 512),
        ("8MiB", 8 * 2**20),
        ("50MB", 50_000_000),
        ("50MB/s", 50_000_000),
        ("1k", 1000),
        ("1KB", 1000),
        ("1KiB", 1024),
        ("2GiB", 2 * 2**30),
        ("1.5GB", 1_500_000_000),
        ("10 MB/s", 10_000_000),
        ("1TB", 10**12),
        ("1b", 1),
        (0, 0),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["lots", "", "-1", -1, True, "5Mbit", "1.5.2MB", 1.5, None])
def test_parse_size_refuses(value: object) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert str(caught.value) == f"expected a size such as 512, 8MiB or 50MB/s, got {value!r}"


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 * 2**20, "5.0 MiB"),
        (1.5 * 2**30, "1.5 GiB"),
        (2**40, "1.0 TiB"),
        (2048 * 2**40, "2048.0 TiB"),
    ],
)
def test_format_bytes(count: float, text: str) -> None:
    assert format_bytes(count) == text


def test_settle_due_lists_only_what_could_be_complete() -> None:
    mono, wall = [100.0], [1_000.0]
    tracker: SettleTracker[str] = SettleTracker(
        10.0, monotonic=lambda: mono[0], wall=lambda: wall[0]
    )
    fresh = Signature(1, int(1_000.0 * 1e9), 1)  # written just now
    aged = Signature(1, int(996.0 * 1e9), 2)  # written 4 s ago: 6 s of settle left
    old = Signature(1, int(900.0 * 1e9), 3)  # long complete: due at the next look
    assert tracker.next_due() is None
    for key, sig in (("fresh", fresh), ("aged", aged)):
        tracker.observe(key, sig, "scan")
    assert tracker.next_due() == 106.0  # when "aged" can first be complete
    tracker.observe("old", old, "scan")
    assert tracker.next_due() == 100.0  # at once
    assert tracker.due() == ["old"]
    tracker.forget("old")
    assert tracker.next_due() == 106.0
    tracker.observe("old", old, "scan")
    mono[0], wall[0] = 106.0, 1_006.0
    assert sorted(tracker.due()) == ["aged", "old"]
    assert tracker.observe("aged", aged, "scan") == "scan"
    mono[0], wall[0] = 110.0, 1_010.0
    assert sorted(tracker.due()) == ["fresh", "old"]
