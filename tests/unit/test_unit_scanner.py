"""uploaderd.scanner on real temporary trees: what is a candidate file, and no escape via links."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from uploaderd.discovery.scanner import ScanRules, check_path, recheck, relative_path, scan
from uploaderd.policy.filters import DEFAULT_EXCLUDE, PathFilter
from uploaderd.policy.settle import Candidate, Signature

DEFAULT = PathFilter((), DEFAULT_EXCLUDE)
NO_LINKS = ScanRules(DEFAULT, recursive=True, follow_symlinks=False)
FOLLOW = ScanRules(DEFAULT, recursive=True, follow_symlinks=True)


def make(path: Path, text: str = "data") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ with ordinary, unicode, spaced, excluded and hidden files; outside/ beside it."""
    root = tmp_path / "root"
    make(root / "top.txt", "top")
    make(root / "run 1" / "sub ü" / "ファイル 1.tif", "image")
    make(root / "run 1" / "a b.json", "{}")
    make(root / "run 1" / "deep" / "er" / "x.bin", "x")
    make(root / "run 1" / "copying.tmp")
    make(root / "run 1" / "upload.part")
    make(root / ".hidden")
    make(root / ".git" / "config")
    make(root / "run 1" / ".cache" / "c.bin")
    (root / "empty dir").mkdir()
    make(tmp_path / "outside" / "secret.txt", "secret")
    make(tmp_path / "outside" / "dir" / "s2.txt", "secret")
    return root


def relpaths(root: Path, rules: ScanRules) -> list[str]:
    return sorted(c.relpath for c in scan(str(root), rules))


def test_scan_finds_nested_files_with_unicode_and_spaces(tree: Path) -> None:
    assert relpaths(tree, NO_LINKS) == [
        "run 1/a b.json",
        "run 1/deep/er/x.bin",
        "run 1/sub ü/ファイル 1.tif",
        "top.txt",
    ]


def test_scan_candidates_carry_root_and_signature(tree: Path) -> None:
    found = {c.relpath: c for c in scan(str(tree), NO_LINKS)}
    candidate = found["run 1/sub ü/ファイル 1.tif"]
    info = os.stat(tree / "run 1" / "sub ü" / "ファイル 1.tif")
    assert candidate == Candidate(
        str(tree),
        "run 1/sub ü/ファイル 1.tif",
        Signature(info.st_size, info.st_mtime_ns, info.st_ino),
    )
    assert candidate.signature.size == len("image")


def test_scan_applies_include_patterns(tree: Path) -> None:
    rules = ScanRules(PathFilter(("**/*.tif", "**/*.json"), DEFAULT_EXCLUDE), True, False)
    assert relpaths(tree, rules) == ["run 1/a b.json", "run 1/sub ü/ファイル 1.tif"]


def test_scan_without_excludes_sees_temp_and_hidden_files(tree: Path) -> None:
    rules = ScanRules(PathFilter((), ()), True, False)
    found = relpaths(tree, rules)
    for relpath in (
        ".hidden",
        ".git/config",
        "run 1/.cache/c.bin",
        "run 1/copying.tmp",
        "run 1/upload.part",
    ):
        assert relpath in found


def test_scan_non_recursive_lists_only_the_top(tree: Path) -> None:
    rules = ScanRules(DEFAULT, recursive=False, follow_symlinks=False)
    assert relpaths(tree, rules) == ["top.txt"]


def test_scan_from_a_start_directory(tree: Path) -> None:
    found = sorted(c.relpath for c in scan(str(tree), NO_LINKS, start=str(tree / "run 1" / "deep")))
    assert found == ["run 1/deep/er/x.bin"]


def test_scan_of_a_missing_root_yields_nothing(tmp_path: Path) -> None:
    assert list(scan(str(tmp_path / "gone"), NO_LINKS)) == []


# --- symlinks ----------------------------------------------------------------------------------


@pytest.fixture
def links(tree: Path) -> Path:
    outside = tree.parent / "outside"
    (tree / "out-file").symlink_to(outside / "secret.txt")
    (tree / "out-dir").symlink_to(outside / "dir")
    (tree / "run 1" / "out-rel").symlink_to(Path("..") / ".." / "outside" / "secret.txt")
    (tree / "in-file").symlink_to(tree / "top.txt")
    (tree / "in-dir").symlink_to(tree / "run 1" / "deep")
    (tree / "dangling").symlink_to(tree / "nowhere")
    return tree


def test_scan_without_follow_skips_every_link(links: Path) -> None:
    assert relpaths(links, NO_LINKS) == [
        "run 1/a b.json",
        "run 1/deep/er/x.bin",
        "run 1/sub ü/ファイル 1.tif",
        "top.txt",
    ]


def test_scan_with_follow_never_leaves_the_root(links: Path) -> None:
    found = relpaths(links, FOLLOW)
    assert not any(p.startswith(("out-", "run 1/out-")) for p in found)
    assert "dangling" not in found
    # Links that stay inside are followed: the file link, and the directory link
    # (its subtree is listed once, under the link or under its real name).
    assert "in-file" in found
    assert ("in-dir/er/x.bin" in found) != ("run 1/deep/er/x.bin" in found)
    assert sorted(p for p in found if not p.endswith("x.bin")) == [
        "in-file",
        "run 1/a b.json",
        "run 1/sub ü/ファイル 1.tif",
        "top.txt",
    ]


def test_scan_with_follow_does_not_loop_through_a_link_to_the_root(tree: Path) -> None:
    (tree / "run 1" / "up").symlink_to("..")
    (tree / "self").symlink_to(".")
    assert relpaths(tree, FOLLOW) == [
        "run 1/a b.json",
        "run 1/deep/er/x.bin",
        "run 1/sub ü/ファイル 1.tif",
        "top.txt",
    ]


def test_scan_of_a_root_that_is_itself_a_link(tree: Path) -> None:
    alias = tree.parent / "alias"
    alias.symlink_to(tree)
    found = sorted(c.relpath for c in scan(str(alias), NO_LINKS))
    assert found == relpaths(tree, NO_LINKS)


@pytest.mark.parametrize("relpath", ["out-file", "out-dir/s2.txt", "run 1/out-rel", "dangling"])
@pytest.mark.parametrize("rules", [NO_LINKS, FOLLOW], ids=["no-follow", "follow"])
def test_check_path_never_leaves_the_root(links: Path, relpath: str, rules: ScanRules) -> None:
    assert check_path(str(links), str(links / relpath), rules) is None


@pytest.mark.parametrize("relpath", ["in-file", "in-dir/er/x.bin"])
def test_check_path_links_inside_the_root(links: Path, relpath: str) -> None:
    assert check_path(str(links), str(links / relpath), NO_LINKS) is None
    candidate = check_path(str(links), str(links / relpath), FOLLOW)
    assert candidate is not None
    assert candidate.relpath == relpath


def test_check_path_ordinary_file(tree: Path) -> None:
    path = tree / "run 1" / "sub ü" / "ファイル 1.tif"
    candidate = check_path(str(tree), str(path), NO_LINKS)
    info = os.stat(path)
    assert candidate == Candidate(
        str(tree),
        "run 1/sub ü/ファイル 1.tif",
        Signature(info.st_size, info.st_mtime_ns, info.st_ino),
    )


@pytest.mark.parametrize(
    "relpath",
    [
        "run 1/copying.tmp",  # excluded
        ".hidden",  # dotfile
        ".git/config",  # inside a dot-directory
        "run 1/.cache/c.bin",
        "run 1",  # a directory
        "empty dir",
        "run 1/gone.txt",  # does not exist (deleted before the event was handled)
    ],
)
def test_check_path_refuses(tree: Path, relpath: str) -> None:
    assert check_path(str(tree), str(tree / relpath), NO_LINKS) is None


def test_check_path_outside_the_root(tree: Path) -> None:
    outside = tree.parent / "outside" / "secret.txt"
    assert check_path(str(tree), str(outside), NO_LINKS) is None
    assert check_path(str(tree), str(tree / ".." / "outside" / "secret.txt"), FOLLOW) is None
    assert check_path(str(tree), str(tree), NO_LINKS) is None


def test_check_path_non_recursive(tree: Path) -> None:
    rules = ScanRules(DEFAULT, recursive=False, follow_symlinks=False)
    top = check_path(str(tree), str(tree / "top.txt"), rules)
    assert top is not None
    assert top.relpath == "top.txt"
    assert check_path(str(tree), str(tree / "run 1" / "a b.json"), rules) is None


def test_check_path_a_path_through_a_linked_directory_without_follow(tree: Path) -> None:
    # The link itself is inside the root, but the file is reached through it.
    (tree / "alias").symlink_to(tree / "run 1")
    assert check_path(str(tree), str(tree / "alias" / "a b.json"), NO_LINKS) is None


@pytest.mark.parametrize("rules", [NO_LINKS, FOLLOW], ids=["no-follow", "follow"])
def test_check_path_looks_at_each_directory_once_per_burst(links: Path, rules: ScanRules) -> None:
    inside: dict[str, bool] = {}
    assert check_path(str(links), str(links / "out-dir" / "s2.txt"), rules, inside) is None
    assert inside == {f"{links}/out-dir": False}  # a link leading out: refused, remembered
    assert check_path(str(links), str(links / "run 1" / "a b.json"), rules, inside) is not None
    assert inside[f"{links}/run 1"] is True
    following = rules is FOLLOW
    found = check_path(str(links), str(links / "in-dir" / "er" / "x.bin"), rules, inside)
    assert (found is not None) == following  # a link to a directory inside: only if following
    assert inside[f"{links}/in-dir/er"] == following
    # The memo answers for the directory, the file is still looked at: a link is a link.
    (links / "run 1" / "later").symlink_to(links / "top.txt")
    assert (check_path(str(links), str(links / "run 1" / "later"), rules, inside) is not None) == (
        following
    )


def test_recheck_finds_a_directory_above_replaced_by_a_link_out_of_the_root(tree: Path) -> None:
    inside: dict[str, bool] = {}
    found = recheck(str(tree), "run 1/deep/er/x.bin", NO_LINKS, inside)
    assert found is not None and found.relpath == "run 1/deep/er/x.bin"
    assert inside == {f"{tree}/run 1/deep/er": True}  # one look at the directory per round
    outside = tree.parent / "outside"
    make(outside / "er" / "x.bin", "not ours")
    (tree / "run 1" / "deep" / "er").rename(tree.parent / "moved")
    (tree / "run 1" / "deep" / "er").symlink_to(outside / "er")
    assert recheck(str(tree), "run 1/deep/er/x.bin", NO_LINKS, {}) is None  # a new round
    assert recheck(str(tree), "run 1/deep/er/x.bin", NO_LINKS) is None  # no memo at all


def test_recheck_of_a_file_at_the_top_and_of_a_file_now_a_link(tree: Path) -> None:
    assert recheck(str(tree), "top.txt", NO_LINKS, {}) is not None
    (tree / "top.txt").unlink()
    (tree / "top.txt").symlink_to(tree.parent / "outside" / "secret.txt")
    assert recheck(str(tree), "top.txt", NO_LINKS, {}) is None
    assert recheck(str(tree), "top.txt", FOLLOW, {}) is None


# --- relative_path -----------------------------------------------------------------------------


def test_relative_path() -> None:
    assert relative_path("/data/root", "/data/root/a/b c.tif") == "a/b c.tif"
    assert relative_path("/data/root/", "/data/root/x") == "x"
    assert relative_path("/data/root", "/data/root") is None
    assert relative_path("/data/root", "/data") is None
    assert relative_path("/data/root", "/data/other/x") is None
    assert relative_path("/data/root", "/data/rootless/x") is None
    assert relative_path("/data/root", "/data/root/../other") is None


def test_relative_path_refuses_names_that_are_not_utf8() -> None:
    name = os.fsdecode(b"bad-\xff.bin")  # surrogate-escaped, as os.scandir returns it
    assert relative_path("/data/root", "/data/root/" + name) is None
