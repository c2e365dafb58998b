"""Strip the shared objects of a relocated virtualenv as dh_strip would; keep RECORD true.

Wheels ship their extension modules with symbols and a .comment section; a Debian package
ships them stripped. Each RECORD line whose file changed since pip wrote it (a stripped
object, a script whose shebang the relocation rewrote) gets the file's hash and size, so
the RECORD files say what is shipped, and say it the same way in every build.

    python3 strip_venv.py VENV
"""

from __future__ import annotations

import base64
import csv
import hashlib
import subprocess
import sys
from pathlib import Path

STRIP = ["strip", "--strip-unneeded", "--remove-section=.comment", "--remove-section=.note"]


def is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def record_hash(path: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def strip_all(venv: Path) -> set[Path]:
    stripped = set()
    for path in sorted(venv.rglob("*.so*")):
        if path.is_file() and not path.is_symlink() and is_elf(path):
            subprocess.run([*STRIP, str(path)], check=True)
            stripped.add(path.resolve())
    return stripped


def refresh_records(venv: Path) -> None:
    for record in venv.glob("lib/python*/site-packages/*.dist-info/RECORD"):
        site = record.parent.parent
        with record.open(newline="") as f:
            rows = list(csv.reader(f))
        for row in rows:
            path = site / row[0]
            if row[1] and path.is_file() and record_hash(path) != row[1]:
                row[1:3] = [record_hash(path), str(path.stat().st_size)]
        with record.open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)


def main() -> None:
    venv = Path(sys.argv[1])
    changed = strip_all(venv)
    refresh_records(venv)
    print(f"stripped {len(changed)} shared objects", file=sys.stderr)


if __name__ == "__main__":
    main()
