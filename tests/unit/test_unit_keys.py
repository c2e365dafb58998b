"""uploaderd.keys: key templates, the values of their variables, and safe rendered keys."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from uploaderd.errors import KeyTemplateError, MtimeOutOfRange
from uploaderd.policy.keys import (
    VARIABLES,
    KeyTemplate,
    file_date,
    file_day,
    key_variables,
    validate_key,
)
from uploaderd.policy.settle import MTIME_MAX, MTIME_MIN


def mtime_ns(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()) * 10**9


def values(relpath: str, mtime: int = 0) -> dict[str, str]:
    return key_variables("scope-a", relpath, session="42", hostname="host1", mtime_ns=mtime)


@pytest.fixture
def far_east_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 14 hours ahead of UTC, so a local-time date would differ from the UTC one."""
    monkeypatch.setenv("TZ", "Etc/GMT-14")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


# --- parse and render ------------------------------------------------------------------------


def test_parse_splits_literals_and_variables() -> None:
    template = KeyTemplate.parse("raw/${job}/${yyyy}-${mm}/${relpath}")
    assert template.text == "raw/${job}/${yyyy}-${mm}/${relpath}"
    assert template.parts == (
        (False, "raw/"),
        (True, "job"),
        (False, "/"),
        (True, "yyyy"),
        (False, "-"),
        (True, "mm"),
        (False, "/"),
        (True, "relpath"),
    )


def test_render_substitutes_every_variable() -> None:
    template = KeyTemplate.parse(
        "${job}/${hostname}/${session}/${yyyy}/${mm}/${dd}/${dirname}/${stem}.${ext}"
    )
    rendered = template.render(values("run1/img/a.tif", mtime_ns(2024, 3, 5, 12, 0)))
    assert rendered == "scope-a/host1/42/2024/03/05/run1/img/a.tif"


def test_render_name_only_and_relpath() -> None:
    assert KeyTemplate.parse("flat/${name}").render(values("x/y/z.bin")) == "flat/z.bin"
    assert KeyTemplate.parse("${relpath}").render(values("x/y/z.bin")) == "x/y/z.bin"


def test_render_does_not_interpret_format_syntax() -> None:
    # Templates are not str.format: braces and attribute syntax stay literal text.
    template = KeyTemplate.parse("{job.__class__}/${relpath}")
    assert template.render(values("a.txt")) == "{job.__class__}/a.txt"


def test_render_validates_the_key_of_each_file() -> None:
    # The template is fine; a top-level file leaves ${dirname} empty and the key would
    # start with '/', which must be refused for that file rather than uploaded.
    template = KeyTemplate.parse("${dirname}/${name}")
    assert template.render(values("d/a.txt")) == "d/a.txt"
    with pytest.raises(KeyTemplateError) as caught:
        template.render(values("a.txt"))
    assert str(caught.value) == "the key '/a.txt' has an empty, '.' or '..' segment"


def test_render_refuses_a_control_character_from_the_path() -> None:
    template = KeyTemplate.parse("${relpath}")
    with pytest.raises(KeyTemplateError) as caught:
        template.render(values("a\nb.txt"))
    assert str(caught.value) == "the key 'a\\nb.txt' contains a control character"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("../${relpath}", "the key '../a/b.txt' has an empty, '.' or '..' segment"),
        ("${relpath}/..", "the key 'a/b.txt/..' has an empty, '.' or '..' segment"),
        ("./${relpath}", "the key './a/b.txt' has an empty, '.' or '..' segment"),
        ("/abs/${relpath}", "the key '/abs/a/b.txt' has an empty, '.' or '..' segment"),
        ("${relpath}/", "the key 'a/b.txt/' has an empty, '.' or '..' segment"),
        (
            "${nope}",
            "unknown variable ${nope}; known: ${dd}, ${dirname}, ${ext}, ${hostname}, ${job}, "
            "${mm}, ${name}, ${relpath}, ${session}, ${stem}, ${yyyy}",
        ),
        (
            "${}/${relpath}",
            "unknown variable ${}; known: " + ", ".join(f"${{{v}}}" for v in sorted(VARIABLES)),
        ),
        (
            "${job}/${yyyy}",
            "the key must contain ${relpath}, ${name} or ${stem}, or every file "
            "would overwrite the same object",
        ),
        (
            "static-key",
            "the key must contain ${relpath}, ${name} or ${stem}, or every file "
            "would overwrite the same object",
        ),
        ("a$b/${relpath}", "a '$' must start a ${variable} reference"),
        ("${relpath}$", "a '$' must start a ${variable} reference"),
        ("$name/${relpath}", "a '$' must start a ${variable} reference"),
        ("${relpath", "a '$' must start a ${variable} reference"),
    ],
)
def test_parse_refuses_unsafe_templates(text: str, message: str) -> None:
    with pytest.raises(KeyTemplateError) as caught:
        KeyTemplate.parse(text)
    assert str(caught.value) == message


@pytest.mark.parametrize("text", ["${name}", "${stem}.gz", "${relpath}", "p/${dirname}/${name}"])
def test_parse_accepts_templates_naming_the_file(text: str) -> None:
    assert KeyTemplate.parse(text).text == text


# --- key_variables ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relpath", "name", "stem", "ext", "dirname"),
    [
        ("a/b.tar.gz", "b.tar.gz", "b.tar", "gz", "a"),
        ("x/y/z.tif", "z.tif", "z", "tif", "x/y"),
        ("README", "README", "README", "", ""),
        (".bashrc", ".bashrc", ".bashrc", "", ""),
        ("conf/.bashrc", ".bashrc", ".bashrc", "", "conf"),
        ("top.txt", "top.txt", "top", "txt", ""),
        ("trailing.", "trailing.", "trailing", "", ""),
        ("dir.d/file", "file", "file", "", "dir.d"),
    ],
)
def test_name_stem_ext_dirname(relpath: str, name: str, stem: str, ext: str, dirname: str) -> None:
    got = values(relpath)
    assert (got["name"], got["stem"], got["ext"], got["dirname"]) == (name, stem, ext, dirname)
    assert got["relpath"] == relpath


def test_fixed_variables() -> None:
    got = values("a.txt")
    assert (got["job"], got["session"], got["hostname"]) == ("scope-a", "42", "host1")
    assert set(got) == VARIABLES


def test_date_from_mtime_in_utc(far_east_timezone: None) -> None:
    # 2024-12-31 23:30 UTC is already 2025-01-01 in the local zone (UTC+14).
    got = values("a.txt", mtime_ns(2024, 12, 31, 23, 30))
    assert datetime.fromtimestamp(mtime_ns(2024, 12, 31, 23, 30) / 1e9).year == 2025
    assert (got["yyyy"], got["mm"], got["dd"]) == ("2024", "12", "31")


@pytest.mark.parametrize(
    "mtime",
    [
        mtime_ns(2025, 2, 3) - 1,  # the last nanosecond of a day
        mtime_ns(2025, 2, 3),
        0,
        -1,  # 1969-12-31: days before the epoch round down, not towards zero
        mtime_ns(1900, 3, 1) + 1,
        MTIME_MIN + 1,
        MTIME_MAX - 1,
    ],
)
def test_the_day_of_an_mtime_is_its_utc_date(mtime: int) -> None:
    when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=mtime // 1000)
    assert file_day(mtime) == when.date()


def test_date_is_zero_padded() -> None:
    got = values("a.txt", mtime_ns(2025, 2, 3) + 999_999_999)
    assert (got["yyyy"], got["mm"], got["dd"]) == ("2025", "02", "03")


# --- validate_key ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["a", "a/b/c.txt", "scope-a/2024/..hidden", "x/.../y", "ünïcode/ファイル.txt", "a b/c"]
)
def test_validate_accepts_safe_keys(key: str) -> None:
    validate_key(key)


@pytest.mark.parametrize("key", ["a/../b", "..", "./a", "a/.", "a//b", "/a", "a/", "/"])
def test_validate_refuses_dot_dotdot_and_empty_segments(key: str) -> None:
    with pytest.raises(KeyTemplateError) as caught:
        validate_key(key)
    assert str(caught.value) == f"the key {key!r} has an empty, '.' or '..' segment"


@pytest.mark.parametrize("char", ["\x00", "\n", "\r", "\t", "\x1b", "\x7f"])
def test_validate_refuses_control_characters(char: str) -> None:
    key = f"a/b{char}c"
    with pytest.raises(KeyTemplateError) as caught:
        validate_key(key)
    assert str(caught.value) == f"the key {key!r} contains a control character"


def test_validate_refuses_an_empty_key() -> None:
    with pytest.raises(KeyTemplateError) as caught:
        validate_key("")
    assert str(caught.value) == "the key is empty"


def test_validate_limits_the_key_to_1024_utf8_bytes() -> None:
    validate_key("a" * 1024)
    validate_key("é" * 512)  # 2 bytes each: exactly 1024
    for key in ("a" * 1025, "é" * 513):
        with pytest.raises(KeyTemplateError) as caught:
            validate_key(key)
        assert str(caught.value) == "the key is longer than 1024 bytes"


# --- mtimes out of range ---------------------------------------------------------------------


def test_an_mtime_held_at_the_stored_bounds_has_no_date() -> None:
    assert file_date(MTIME_MAX) is None and file_date(MTIME_MIN) is None
    assert file_date(mtime_ns(2100, 1, 1)) == datetime(2100, 1, 1, tzinfo=UTC)
    assert {"yyyy", "mm", "dd"}.isdisjoint(values("a/b.txt", MTIME_MAX))


def test_only_a_template_with_a_date_fails_for_an_unknown_date() -> None:
    unknown = values("a/b.txt", MTIME_MAX)
    assert KeyTemplate.parse("${job}/${relpath}").render(unknown) == "scope-a/a/b.txt"
    with pytest.raises(MtimeOutOfRange, match=r"^mtime out of range: .*\$\{mm\} has no value"):
        KeyTemplate.parse("${mm}/${relpath}").render(unknown)
