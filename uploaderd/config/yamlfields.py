"""Reading YAML into typed values while remembering the line of every key.

``yaml.safe_load`` gives the data; ``yaml.compose`` (which builds nodes, never objects) gives
the line of each key and catches duplicate keys, which ``safe_load`` silently collapses. A
``Fields`` view over one mapping then hands out typed values and records every problem it
meets, so a file is reported in full instead of one error per run.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from uploaderd.errors import ConfigProblem

T = TypeVar("T")
KeyPath = tuple[str, ...]

# What aliases (``*name``) may stand for in one file, counted in values once expanded. A
# config needs a few at most; nine nested lists of nine aliases (a "billion laughs" of 466
# bytes) stand for 387 million, which walking the file would build.
MAX_ALIAS_VALUES = 10_000


class YamlDocument:
    """One parsed file: its data, the line of every key path, and the problems found so far."""

    def __init__(self, file: Path | None, text: str) -> None:
        self.file = file
        self.problems: list[ConfigProblem] = []
        self.lines: dict[KeyPath, int] = {}
        self.data: Any = None
        try:
            too_many = _alias_overflow(text)
            if too_many is not None:
                self.problems.append(
                    ConfigProblem(
                        file,
                        too_many,
                        None,
                        (
                            f"aliases (*name) here stand for more than {MAX_ALIAS_VALUES:,} values "
                            "once expanded; refusing the file (write the values out, or use fewer "
                            "aliases)"
                        ),
                    )
                )
                return
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = _keys_as_written(yaml.safe_load(text), node)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            self.problems.append(ConfigProblem(file, line, None, f"invalid YAML: {exc.problem}"))
            return
        except yaml.YAMLError as exc:
            self.problems.append(ConfigProblem(file, None, None, f"invalid YAML: {exc}"))
            return
        if node is not None:
            self._index(node, ())

    @classmethod
    def read(cls, file: Path) -> YamlDocument:
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            document = cls(file, "")
            document.problems.append(ConfigProblem(file, None, None, f"cannot read: {exc}"))
            return document
        return cls(file, text)

    def _index(self, node: yaml.Node, path: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    self.problems.append(
                        ConfigProblem(self.file, line, _dotted((*path, key)), "duplicate key")
                    )
                seen.add(key)
                self.lines[(*path, key)] = line
                self._index(value_node, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.lines[(*path, str(index))] = item.start_mark.line + 1
                self._index(item, (*path, str(index)))

    def problem(self, path: KeyPath, message: str) -> None:
        line = None
        for depth in range(len(path), 0, -1):  # the key itself, else its closest parent
            line = self.lines.get(path[:depth])
            if line is not None:
                break
        self.problems.append(ConfigProblem(self.file, line, _dotted(path) or None, message))

    def root(self) -> Fields:
        if self.data is None:
            return Fields(self, (), {})
        if not isinstance(self.data, dict):
            self.problem((), f"expected a mapping of keys at the top, got {_kind(self.data)}")
            return Fields(self, (), {})
        return Fields(self, (), self.data)


class Fields:
    """Typed access to one YAML mapping; every key read is ticked off, the rest are unknown."""

    def __init__(self, document: YamlDocument, path: KeyPath, data: Mapping[str, Any]) -> None:
        self.document = document
        self.path = path
        self.data = data
        self._read: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.data

    def path_of(self, key: str) -> KeyPath:
        return (*self.path, key)

    def problem(self, key: str, message: str) -> None:
        self.document.problem(self.path_of(key), message)

    def value(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        return self.data.get(key, default)

    def typed(self, key: str, kind: type[T] | tuple[type, ...], default: T, what: str) -> T:
        """The value if it has the right type, else ``default`` and a problem."""
        raw = self.value(key, default)
        if raw is default:
            return default
        if isinstance(raw, bool) and kind is not bool and bool not in _as_tuple(kind):
            self.problem(key, f"expected {what}, got {_kind(raw)}")
            return default
        if not isinstance(raw, kind):
            self.problem(key, f"expected {what}, got {_kind(raw)}")
            return default
        return raw  # type: ignore[return-value]

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        if required and self.data.get(key) in (None, ""):
            self._read.add(key)
            self.problem(key, "is required (a non-empty string)")
            return default
        return self.typed(key, str, default, "a string")

    def boolean(self, key: str, default: bool) -> bool:
        return self.typed(key, bool, default, "true or false")

    def integer(self, key: str, default: int, *, minimum: int | None = None) -> int:
        value = self.typed(key, int, default, "an integer")
        if minimum is not None and value < minimum:
            self.problem(key, f"must be at least {minimum}, got {value}")
            return default
        return value

    def number(self, key: str, default: float, *, minimum: float | None = None) -> float:
        value = float(self.typed(key, (int, float), default, "a number"))
        if minimum is not None and value < minimum:
            self.problem(key, f"must be at least {minimum}, got {value}")
            return default
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.value(key, default)
        if value not in choices:
            self.problem(key, f"expected one of {', '.join(choices)}, got {value!r}")
            return default
        return str(value)

    def converted(self, key: str, convert: Callable[[Any], T], default: T) -> T:
        """A value run through ``convert``; its ValueError becomes a problem on this key."""
        if key not in self.data:
            self._read.add(key)
            return default
        try:
            return convert(self.value(key))
        except ValueError as exc:
            self.problem(key, str(exc))
            return default

    def string_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        raw = self.value(key, None)
        if raw is None:
            return default
        # A bare string is refused, not taken as a one-item list: "paths: /a, /b" would
        # silently become one (wrong) path.
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            self.problem(key, f"expected a list of strings, got {_kind(raw)}")
            return default
        return tuple(raw)

    def string_map(self, key: str) -> dict[str, str]:
        raw = self.value(key, None)
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.problem(key, f"expected a mapping of names to strings, got {_kind(raw)}")
            return {}
        result: dict[str, str] = {}
        for name, item in raw.items():
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                self.document.problem((*self.path_of(key), str(name)), "expected a string")
                continue
            result[str(name)] = str(item)
        return result

    def section(self, key: str) -> Fields:
        raw = self.value(key, None)
        if raw is None:
            return Fields(self.document, self.path_of(key), {})
        if not isinstance(raw, dict):
            self.problem(key, f"expected a mapping, got {_kind(raw)}")
            return Fields(self.document, self.path_of(key), {})
        return Fields(self.document, self.path_of(key), raw)

    def finish(self) -> None:
        """Report every key nobody read, with the closest known key as a hint."""
        for key in self.data:
            if key in self._read:
                continue
            close = difflib.get_close_matches(str(key), sorted(self._read), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(self._read))
            self.problem(str(key), f"unknown key{hint} (known here: {known})")


def _keys_as_written(data: Any, node: yaml.Node | None) -> Any:
    """The data with YAML 1.2 booleans: only true and false.

    YAML 1.1 (PyYAML) reads a plain ``on`` key (trigger.on) or ``no`` as a boolean. Keys in
    our files are names, so each key keeps the text of its node; a value spelled yes/no/on/off
    stays a string. Both come from the composed nodes, so loading stays ``yaml.safe_load``.
    """
    if isinstance(node, yaml.MappingNode) and isinstance(data, dict):
        result = {}
        for key_node, value_node in node.value:
            written = str(key_node.value)
            constructed = yaml.safe_load(written) if key_node.style is None else written
            key = constructed if constructed in data else written
            if key in data:
                result[written] = _keys_as_written(data[key], value_node)
        return result
    if isinstance(node, yaml.SequenceNode) and isinstance(data, list):
        pairs = zip(data, node.value, strict=False)
        return [_keys_as_written(item, child) for item, child in pairs]
    if isinstance(data, bool) and isinstance(node, yaml.ScalarNode) and node.style is None:
        # Values too follow YAML 1.2: "off" is a string (and an error where a bool is due).
        return data if node.value.lower() in ("true", "false") else node.value
    return data


def _alias_overflow(text: str) -> int | None:
    """The line of the alias at which the file's aliases stand for more than
    ``MAX_ALIAS_VALUES`` values, or None. Reads the parser's events only: nothing is built."""
    sizes: dict[str, int] = {}  # anchor -> values it stands for
    open_collections: list[tuple[str | None, int]] = []  # (anchor, values so far)
    expanded = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            open_collections.append((event.anchor, 1))
            continue
        if isinstance(event, yaml.AliasEvent):
            values = sizes.get(str(event.anchor), 1)
            expanded += values
            if expanded > MAX_ALIAS_VALUES:
                return event.start_mark.line + 1 if event.start_mark else 1
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, values = open_collections.pop()
            if anchor is not None:
                sizes[anchor] = values
        elif isinstance(event, yaml.ScalarEvent):
            values = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        else:
            continue
        if open_collections:
            anchor, held = open_collections[-1]
            open_collections[-1] = (anchor, held + values)
    return None


def _dotted(path: KeyPath) -> str:
    return ".".join(path)


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind(value: object) -> str:
    names = {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "nothing",
    }
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"[:120]
