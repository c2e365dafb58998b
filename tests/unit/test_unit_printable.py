"""uploaderd.printable: what reaches a terminal or a log line from a file name."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from uploaderd.observe.logs import JsonFormatter, TextFormatter
from uploaderd.policy.printable import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain/ünïcödé 日本.txt", "plain/ünïcödé 日本.txt"),
        ("evil\x1b[2J\x1b[31m.txt", "evil\\x1b[2J\\x1b[31m.txt"),
        ("two\nlines\r\tand a tab", "two\\nlines\\r\\tand a tab"),
        ("bell\x07 del\x7f c1\x9b", "bell\\x07 del\\x7f c1\\x9b"),
        ("right-to-left\u202etxt.exe", "right-to-left\\u202etxt.exe"),
        ("line\u2028separator", "line\\u2028separator"),
        (os.fsdecode(b"latin1-\xe9t\xe9.txt"), "latin1-\\xe9t\\xe9.txt"),
        ("a\\x1b is four characters", "a\\\\x1b is four characters"),
        ("no\u00a0break space", "no\u00a0break space"),
    ],
)
def test_unsafe_characters_become_backslash_escapes(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(raw).isprintable() or "\u00a0" in raw


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uploaderd.scanner", logging.WARNING, __file__, 1, message, args, None)


def test_log_lines_escape_file_names_in_both_formats() -> None:
    name = os.fsdecode(b"/data/bad\xff\nFAKE")
    text = TextFormatter().format(record("skipping %s", name))
    assert text == "WARNING uploaderd.scanner: skipping /data/bad\\xff\\nFAKE"
    entry = json.loads(JsonFormatter().format(record("skipping %s", name)))
    assert entry["message"] == "skipping /data/bad\\xff\\nFAKE"


def test_a_log_line_with_a_surrogate_can_be_written_to_a_strict_stream() -> None:
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.emit(record("skipping %s", os.fsdecode(b"\xff")))  # no UnicodeEncodeError
    stream.flush()
    assert stream.buffer.getvalue() == b"WARNING uploaderd.scanner: skipping \\xff\n"
