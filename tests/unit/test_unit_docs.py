"""What a user looks for in the docs is there, and what the docs tell them to run exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OLD_SCRIPTS = ("upload.py", "retry.py", "trigger_endpoint.py", "master.py", "init_db.py")


@pytest.mark.parametrize("script", OLD_SCRIPTS)
def test_migrating_names_each_old_script_with_its_command(script: str) -> None:
    """Issue 25: a user who searches docs/migrating.md for their script finds its command."""
    rows = (REPO / "docs" / "migrating.md").read_text().splitlines()
    [row] = [line for line in rows if line.startswith(f"| `{script}")]
    assert re.search(r"`uploaderd [a-z]", row), row


@pytest.mark.parametrize("doc", ["README.md", "docs/commands.md"])
def test_the_man_page_of_a_checkout_is_named_where_man_8_is(doc: str) -> None:
    """Issue 25: `man 8 uploaderd` works only once the .deb is installed."""
    text = (REPO / doc).read_text()
    assert "man 8 uploaderd" in text
    assert "man -l packaging/man/uploaderd.8" in text
    assert (REPO / "packaging" / "man" / "uploaderd.8").is_file()
