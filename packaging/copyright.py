"""Write the package's machine-readable copyright file (DEP-5) to stdout.

Run by the virtualenv's own interpreter at build time: one paragraph for uploaderd, then
one per bundled distribution with the files it installed, the copyright lines and the
license text its wheel ships (the texts stay in the venv too, where the wheels put them).

    python copyright.py PREFIX    # PREFIX: the venv's final path without the leading /
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import PurePosixPath

HEADER = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: uploaderd
Comment: uploaderd's Python dependencies are bundled in a virtualenv under
 /{prefix}; each has a paragraph below, with the license text its wheel ships.

Files: *
Copyright: 2026 the uploaderd authors
License: Apache-2.0
"""

APACHE = """\
License: Apache-2.0
 Licensed under the Apache License, Version 2.0 (the "License"); you may not
 use this file except in compliance with the License. You may obtain a copy of
 the License at https://www.apache.org/licenses/LICENSE-2.0
 .
 Unless required by applicable law or agreed to in writing, software
 distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
 WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
 License for the specific language governing permissions and limitations under
 the License.
 .
 On Debian systems, the complete text of the Apache License, Version 2.0 can be
 found in "/usr/share/common-licenses/Apache-2.0".
"""

# Trove classifiers and free-text License fields, as DEP-5 short names.
SHORT_NAMES = {
    "apache software license": "Apache-2.0",
    "apache-2.0": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "mit license": "Expat",
    "mit": "Expat",
    "bsd license": "BSD-3-clause",
    "bsd-3-clause": "BSD-3-clause",
    "bsd-2-clause": "BSD-2-clause",
    "gnu library or lesser general public license (lgpl)": "LGPL-3+",
    "lgpl with exceptions": "LGPL-3+ with OpenSSL exception",
    "python software foundation license": "PSF-2",
    "psf-2.0": "PSF-2",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
}
# "Copyright (c) 2020 X", "Copyright 2011 X", "(c) 2020 X", "© X"; not the Apache text's
# "(c) You must retain" nor "COPYRIGHT HOLDERS BE LIABLE".
SPDX = {
    "Apache-2.0": "Apache-2.0",
    "MIT": "Expat",
    "BSD-2-Clause": "BSD-2-clause",
    "BSD-3-Clause": "BSD-3-clause",
    "PSF-2.0": "PSF-2",
    "MPL-2.0": "MPL-2.0",
}
APACHE_TEXT = "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION"
NOTICE = re.compile(r"^\s*(?:copyright\s+(?:\(c\)|©|\d{4})|\(c\)\s*\d{4}|©)", re.IGNORECASE)


def from_spdx(expression: str) -> str | None:
    """``Apache-2.0 AND BSD-2-Clause`` as DEP-5's ``Apache-2.0 and BSD-2-clause``."""
    words = expression.split()
    if len(words) % 2 == 0:
        return None
    names = []
    for i, word in enumerate(words):
        if i % 2 and word in ("AND", "OR"):
            names.append(word.lower())
        elif not i % 2 and word in SPDX:
            names.append(SPDX[word])
        else:
            return None
    return " ".join(names)


def short_name(dist: metadata.Distribution) -> str:
    meta = dist.metadata
    spdx = from_spdx(meta.get("License-Expression") or "")
    if spdx:
        return spdx
    candidates = []
    candidates += [
        c.rsplit("::", 1)[-1]
        for c in meta.get_all("Classifier") or []
        if c.startswith("License ::")
    ]
    candidates.append((meta.get("License") or "").splitlines()[0] if meta.get("License") else "")
    for candidate in candidates:
        name = SHORT_NAMES.get(candidate.strip().lower())
        if name:
            return name
    return f"{dist.metadata['Name']}-license"


def license_files(dist: metadata.Distribution) -> list[PurePosixPath]:
    return sorted(
        PurePosixPath(str(f))
        for f in dist.files or []
        if ".dist-info/" in str(f)
        and re.search(r"(LICEN[CS]E|COPYING|NOTICE)", f.name, re.IGNORECASE)
    )


def installed_paths(dist: metadata.Distribution, site: str, prefix: str) -> list[str]:
    """Glob patterns for what the distribution installed, relative to the package root."""
    tops: set[str] = set()
    for file in dist.files or []:
        parts = PurePosixPath(str(file)).parts
        if parts[0] == "..":  # console scripts: ../../../bin/NAME
            tops.add(f"{prefix}/bin/{parts[-1]}")
        elif len(parts) == 1:
            tops.add(f"{site}/{parts[0]}")
        else:
            tops.add(f"{site}/{parts[0]}/*")
    return sorted(tops)


def paragraph(dist: metadata.Distribution, site: str, prefix: str) -> str:
    name, version = dist.metadata["Name"], dist.version
    texts = [dist.locate_file(f).read_text(errors="replace") for f in license_files(dist)]
    notices = sorted(
        {
            line.strip()
            for text in texts
            for line in text.splitlines()
            if NOTICE.match(line) and "[yyyy]" not in line and len(line) < 200
        }
    )
    copyright_ = notices or [f"the {name} authors (the license file names no holder)"]
    lic = short_name(dist)
    body = [
        f"Files: {' '.join(installed_paths(dist, site, prefix))}",
        "Copyright: " + "\n ".join(copyright_),
        f"Comment: {name} {version}, from PyPI.",
    ]
    # Apache-2.0's text is in /usr/share/common-licenses (the last paragraph says so).
    own = [text.strip() for text in texts if APACHE_TEXT not in text]
    if lic == "Apache-2.0" or not own:
        body.append(f"License: {lic}")
    else:
        lines = [
            (" " + line.rstrip()) if line.strip() else " ."
            for line in "\n\n".join(own).splitlines()
        ]
        body.append(f"License: {lic}\n" + "\n".join(lines))
    return "\n".join(body) + "\n"


def main() -> None:
    prefix = sys.argv[1].strip("/")
    site = f"{prefix}/lib/python{sys.version_info[0]}.{sys.version_info[1]}/site-packages"
    dists = sorted(
        (d for d in metadata.distributions() if d.metadata["Name"] != "uploaderd"),
        key=lambda d: d.metadata["Name"].lower(),
    )
    print(HEADER.format(prefix=prefix))
    for dist in dists:
        print(paragraph(dist, site, prefix))
    print(APACHE, end="")


if __name__ == "__main__":
    main()
