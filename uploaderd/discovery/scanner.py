"""Walking a root and checking single paths: what is a candidate file of a job.

Never follows a symlink out of the root. With ``follow_symlinks: false`` no symlink is
followed at all; with ``true`` a link is followed only when its target lies inside the root.
"""

from __future__ import annotations

import logging
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from uploaderd.policy.filters import PathFilter
from uploaderd.policy.settle import Candidate, Signature

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanRules:
    filter: PathFilter
    recursive: bool
    follow_symlinks: bool


def relative_path(root: str, path: str) -> str | None:
    """The path relative to root with '/' separators, or None when outside or not UTF-8.

    A name that is not valid UTF-8 (Python holds its bytes as lone surrogates) is skipped,
    with a directory's whole subtree: S3 keys and the ledger's text columns take UTF-8
    only, and guessing an encoding could give two files one key. The warning shows the bytes
    as ``\\xff`` escapes (``logs`` escapes every message), so the file can be found and
    renamed; it is queued at the next look once its name is UTF-8.
    """
    relpath = os.path.relpath(path, root)
    if relpath in (".", "..") or relpath.startswith("../"):
        return None
    return None if _skipped_not_utf8(relpath, path) else relpath


def _skipped_not_utf8(name: str, path: str) -> bool:
    """True, with a warning, for a name that is not valid UTF-8 (cheap for ASCII names)."""
    if name.isascii() or not not_utf8(name):
        return False
    log.warning(
        "skipping %s: its name is not valid UTF-8, which S3 keys and the ledger "
        "require; rename it to upload it",
        path,
    )
    return True


def not_utf8(name: str) -> bool:
    """True for a name decoded from bytes that are not UTF-8 (surrogateescape)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_path(
    root: str, path: str, rules: ScanRules, inside: dict[str, bool] | None = None
) -> Candidate | None:
    """A single path from an event: a candidate, or None (gone, filtered, link, not a file).

    ``inside`` is ``recheck``'s memo of directories free of links, for a burst of events.
    """
    relpath = relative_path(root, path)
    if relpath is None or (not rules.recursive and "/" in relpath):
        return None
    if not rules.filter.matches(relpath) or _in_pruned_dir(relpath, rules.filter):
        return None
    return recheck(root, relpath, rules, inside)


def recheck(
    root: str, relpath: str, rules: ScanRules, inside: dict[str, bool] | None = None
) -> Candidate | None:
    """A candidate found before, looked at again while it settles (or first seen, by
    ``check_path``, once its relative path passed the filters).

    What can have changed is the file (gone, now a link or not a file) or a directory above
    it (replaced by a link leading out of the root). ``inside`` remembers, for one round of
    looks at one job's files, which directories (by path) were found free of links (or,
    when following links, leading inside): a burst of thousands of files in one directory
    costs one ``realpath`` of it, not one of every file.
    """
    path = f"{root}/{relpath}"
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            if not rules.follow_symlinks:
                return None
            # The link's target decides, wherever it is: no memo.
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode) or not _stays_inside(root, path, relpath, rules):
                return None
            return Candidate(root, relpath, Signature.of(info))
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    parent = posixpath.dirname(relpath)
    directory = f"{root}/{parent}"
    ok = inside.get(directory) if inside is not None else None
    if ok is None:
        ok = not parent or _stays_inside(root, directory, parent, rules)
        if inside is not None:
            inside[directory] = ok
    return Candidate(root, relpath, Signature.of(info)) if ok else None


def scan(root: str, rules: ScanRules, start: str | None = None) -> Iterator[Candidate]:
    """Every candidate under ``start`` (default: the whole root), depth first."""
    real_root = os.path.realpath(root)
    seen_dirs: set[tuple[int, int]] = set()
    try:  # a link back to the root (``ln -s .. run1/up``) must not list the whole root again
        info = os.stat(root)
        seen_dirs.add((info.st_dev, info.st_ino))
    except OSError:
        pass
    first = start or root
    first_rel = (
        "" if os.path.normpath(first) == os.path.normpath(root) else (relative_path(root, first))
    )
    if first_rel is None:
        return  # outside the root, or a name that is not UTF-8
    # (directory, its path relative to the root, with a trailing '/' unless the root itself):
    # relative paths are built by appending names, never computed from absolute ones.
    stack = [(first, first_rel + "/" if first_rel else "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            log.warning("cannot list %s: %s", directory, exc.strerror)
            continue
        for entry in entries:
            if _skipped_not_utf8(entry.name, entry.path):
                continue
            relpath = prefix + entry.name
            try:
                is_link = entry.is_symlink()
                if is_link and not rules.follow_symlinks:
                    continue
                if entry.is_dir(follow_symlinks=True):
                    if (
                        rules.recursive
                        and not rules.filter.prunes_dir(relpath)
                        and _new_dir(entry, real_root, is_link, seen_dirs)
                    ):
                        stack.append((entry.path, relpath + "/"))
                    continue
                if not entry.is_file(follow_symlinks=True) or not rules.filter.matches(relpath):
                    continue
                if is_link and not _inside(os.path.realpath(entry.path), real_root):
                    continue
                info = entry.stat(follow_symlinks=True)
            except OSError:
                continue  # vanished while we looked
            yield Candidate(root, relpath, Signature.of(info))


def _new_dir(
    entry: os.DirEntry[str], real_root: str, is_link: bool, seen: set[tuple[int, int]]
) -> bool:
    """Descend into a directory once, and into a linked one only if it stays inside the root."""
    if is_link and not _inside(os.path.realpath(entry.path), real_root):
        return False
    info = entry.stat(follow_symlinks=True)
    key = (info.st_dev, info.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


def _stays_inside(root: str, path: str, relpath: str, rules: ScanRules) -> bool:
    """No link anywhere between root and file (or, when following, the target stays inside)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if rules.follow_symlinks:
        return _inside(real, real_root)
    return real == os.path.join(real_root, relpath)


def _in_pruned_dir(relpath: str, path_filter: PathFilter) -> bool:
    parts = relpath.split("/")[:-1]
    return any(path_filter.prunes_dir("/".join(parts[: i + 1])) for i in range(len(parts)))


def _inside(path: str, real_root: str) -> bool:
    return path == real_root or path.startswith(real_root.rstrip("/") + "/")


def network_filesystem(path: Path) -> str | None:
    """The filesystem type when ``path`` is on NFS/SMB/FUSE-like mounts (inotify is blind)."""
    remote = (
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "afs",
        "sshfs",
        "davfs",
    )
    best, best_type = "", ""
    try:
        with Path("/proc/self/mounts").open(encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount_point = fields[1].replace("\\040", " ")
                if _inside(str(path), mount_point) and len(mount_point) > len(best):
                    best, best_type = mount_point, fields[2]
    except OSError:
        return None
    if best_type in remote or best_type.startswith("fuse"):
        return best_type
    return None
