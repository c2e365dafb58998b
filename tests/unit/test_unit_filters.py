"""uploaderd.filters: which relative paths of a job count."""

from __future__ import annotations

import pytest

from uploaderd.policy.filters import DEFAULT_EXCLUDE, PathFilter, check_pattern

DEFAULT = PathFilter((), DEFAULT_EXCLUDE)


@pytest.mark.parametrize(
    ("relpath", "reason"),
    [
        ("a.tmp", "excluded by **/*.tmp"),
        ("run1/deep/a.tmp", "excluded by **/*.tmp"),
        ("a.part", "excluded by **/*.part"),
        ("run1/a.part", "excluded by **/*.part"),
        (".hidden", "excluded by **/.*"),
        ("run1/.~lock.x#", "excluded by **/.*"),
        (".git/config", "excluded by **/.*/**"),
        ("run1/.cache/deep/x.tif", "excluded by **/.*/**"),
    ],
)
def test_default_excludes(relpath: str, reason: str) -> None:
    assert DEFAULT.reason(relpath) == reason
    assert not DEFAULT.matches(relpath)


@pytest.mark.parametrize(
    "relpath", ["a.tif", "run1/a.tif", "a.tmp.tif", "dir.tmp/a.tif", "a.partial", "run.1/x"]
)
def test_default_filter_keeps_ordinary_files(relpath: str) -> None:
    assert DEFAULT.reason(relpath) is None
    assert DEFAULT.matches(relpath)


def test_include_globstar_matches_top_level_and_nested() -> None:
    f = PathFilter(("**/*.tif", "**/*.json"), DEFAULT_EXCLUDE)
    for relpath in ("a.tif", "run1/a.tif", "run1/x/y/a.tif", "meta.json", "r/meta.json"):
        assert f.reason(relpath) is None, relpath
    assert f.reason("a.txt") == "matches no include pattern **/*.tif, **/*.json"
    assert f.reason("run1/a.TIF") == "matches no include pattern **/*.tif, **/*.json"
    # Excludes still apply to included names.
    assert f.reason("run1/.a.tif") == "excluded by **/.*"


def test_include_without_globstar_is_top_level_only() -> None:
    f = PathFilter(("*.tif",), ())
    assert f.matches("a.tif")
    assert f.reason("run1/a.tif") == "matches no include pattern *.tif"


def test_include_a_subtree() -> None:
    f = PathFilter(("raw/**",), ())
    assert f.matches("raw/a.tif")
    assert f.matches("raw/b/c.tif")
    assert f.reason("cooked/a.tif") == "matches no include pattern raw/**"


def test_no_excludes_keeps_dotfiles() -> None:
    f = PathFilter((), ())
    assert f.matches(".hidden")
    assert f.matches(".git/config")
    assert not f.prunes_dir(".git")


def test_user_excludes_replace_the_defaults() -> None:
    f = PathFilter((), ("**/*.log",))
    assert f.reason("x/a.log") == "excluded by **/*.log"
    assert f.matches("a.tmp")


def test_reason_names_the_first_matching_exclude() -> None:
    f = PathFilter((), ("**/*.bak", "**/old/**", "**/*"))
    assert f.reason("old/a.bak") == "excluded by **/*.bak"
    assert f.reason("old/a.txt") == "excluded by **/old/**"
    assert f.reason("a.txt") == "excluded by **/*"


def test_prunes_dir_for_directory_excludes() -> None:
    assert DEFAULT.prunes_dir(".git")
    assert DEFAULT.prunes_dir("run1/.cache")
    assert not DEFAULT.prunes_dir("run1")
    assert not DEFAULT.prunes_dir("run.1")
    f = PathFilter((), ("**/scratch/**", "**/*.tmp"))
    assert f.prunes_dir("scratch")
    assert f.prunes_dir("a/b/scratch")
    assert not f.prunes_dir("a.tmp")  # a file pattern never prunes a directory
    assert not f.prunes_dir("scratchpad")


def test_no_exclude_never_prunes() -> None:
    assert not PathFilter(("**/*.tif",), ()).prunes_dir(".git")


@pytest.mark.parametrize("pattern", ["**/*.tif", "raw/**", "*.json", "run[0-9]/*"])
def test_check_pattern_accepts_relative_globs(pattern: str) -> None:
    check_pattern(pattern)


def test_check_pattern_refuses_empty() -> None:
    with pytest.raises(ValueError) as caught:
        check_pattern("")
    assert str(caught.value) == "empty pattern"


def test_check_pattern_refuses_absolute() -> None:
    with pytest.raises(ValueError) as caught:
        check_pattern("/data/*.tif")
    assert str(caught.value) == (
        "'/data/*.tif': patterns match paths relative to the root; drop the '/'"
    )
