"""Which relative paths of a job count: include/exclude globs, compiled once per job."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from wcmatch import glob

# GLOBSTAR: "**/" matches zero or more directories; DOTGLOB: "*" also matches names starting
# with a dot, so excluding dotfiles is the job of an explicit exclude pattern (a default one).
_FLAGS = glob.GLOBSTAR | glob.DOTGLOB

DEFAULT_EXCLUDE = ("**/*.tmp", "**/*.part", "**/.*", "**/.*/**")


@dataclass(frozen=True)
class PathFilter:
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    _include: glob.WcMatcher[str] | None = field(init=False, repr=False, compare=False)
    _exclude: glob.WcMatcher[str] | None = field(init=False, repr=False, compare=False)
    _prune: glob.WcMatcher[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Directory patterns ("x/**") let a scan skip whole subtrees instead of testing each file.
        prune = [p[: -len("/**")] for p in self.exclude if p.endswith("/**")]
        object.__setattr__(self, "_include", _compile(self.include))
        object.__setattr__(self, "_exclude", _compile(self.exclude))
        object.__setattr__(self, "_prune", _compile(prune))

    def matches(self, relpath: str) -> bool:
        return self.reason(relpath) is None

    def reason(self, relpath: str) -> str | None:
        """None when the path counts, else why not (for ``uploaderd explain``)."""
        if self._include is not None and not self._include.match(relpath):
            return "matches no include pattern " + ", ".join(self.include)
        if self._exclude is not None and self._exclude.match(relpath):
            pattern = next(p for p in self.exclude if glob.globmatch(relpath, p, flags=_FLAGS))
            return f"excluded by {pattern}"
        return None

    def prunes_dir(self, reldir: str) -> bool:
        return self._prune is not None and bool(self._prune.match(reldir))


def check_pattern(pattern: str) -> None:
    """Raise ValueError for a pattern that cannot work on relative paths."""
    if not pattern:
        raise ValueError("empty pattern")
    if pattern.startswith("/"):
        raise ValueError(f"{pattern!r}: patterns match paths relative to the root; drop the '/'")
    glob.compile(pattern, flags=_FLAGS)  # raises on malformed brackets and the like


def _compile(patterns: Sequence[str]) -> glob.WcMatcher[str] | None:
    return glob.compile(list(patterns), flags=_FLAGS) if patterns else None
