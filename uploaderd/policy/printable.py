"""Text from outside (file names, errors) made safe to print on a terminal or a log line.

A file name may hold any byte but '/' and NUL: escape sequences that recolour or clear the
operator's terminal, a newline that forges a line of output, bytes that are not UTF-8 (which
Python keeps as lone surrogates). Everything uploaderd prints for a person goes through
``printable``: such characters become backslash escapes, so the name can still be told
apart and found (``ls $'...'`` or ``find -name $'...'`` take the same escapes).
"""

from __future__ import annotations

import unicodedata

# Control characters, lone surrogates (undecodable bytes), line and paragraph separators and
# invisible format characters (such as right-to-left overrides, which reorder what follows).
_UNSAFE = frozenset({"Cc", "Cs", "Zl", "Zp", "Cf"})
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\\": "\\\\"}


def printable(text: str) -> str:
    """``text`` with every unsafe character as a backslash escape (and ``\\`` doubled)."""
    if text.isprintable() and "\\" not in text:
        return text  # the common case, without a look at each character
    return "".join(_escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch in _SHORT:
        return _SHORT[ch]
    if unicodedata.category(ch) not in _UNSAFE:
        return ch
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): as the byte
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
