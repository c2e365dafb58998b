"""One value for each default: the code's, the shipped uploaderd.yaml's, the sample job's and
docs/configuration.md's tables are checked equal, through the real loader."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from uploaderd.config.settings import (
    DaemonConfig,
    Job,
    S3Settings,
    load_daemon_config,
    parse_job_text,
)
from uploaderd.config.yamlfields import YamlDocument

REPO = Path(__file__).resolve().parents[2]
ETC = REPO / "etc" / "uploaderd"
DOCS = REPO / "docs" / "configuration.md"
MINIMAL_JOB = {"source": {"paths": ["/data/a"]}, "destination": {"bucket": "lab-raw"}}
# Where a job table's keys sit in a job file, by the heading above the table.
JOB_SECTIONS = {
    "Top level": "",
    "`source`": "source",
    "`destination`": "destination",
    "`retry`": "retry",
    "`session`": "session",
    "`trigger`": "trigger",
}
# The sample's keys that show an example rather than the default.
SAMPLE_EXAMPLES = {
    "name",
    "source.paths",
    "source.include",
    "destination.bucket",
    "destination.key",
    "destination.storage_class",
    "destination.sse",
    "destination.kms_key_id",
    "destination.tags",
    "destination.metadata",
    "destination.bandwidth",
    "destination.windows",
    "session.group_by",
    "session.complete_when",
    "trigger.url",
    "trigger.headers",
}


def daemon_config(tmp_path: Path, document: dict[str, Any]) -> DaemonConfig:
    file = tmp_path / "uploaderd.yaml"
    file.write_text(yaml.safe_dump(document) if document else "")
    return load_daemon_config(file, env={})


def job(document: dict[str, Any]) -> Job:
    return parse_job_text(yaml.safe_dump(document), name="a", defaults=S3Settings())


def nested(dotted: str, value: object) -> dict[str, Any]:
    """``a.b`` and 1 → ``{"a": {"b": 1}}``."""
    *parents, last = dotted.split(".")
    document: dict[str, Any] = {last: value}
    for name in reversed(parents):
        document = {name: document}
    return document


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and key in out else value
    return out


def documented_defaults(heading: str) -> list[tuple[str, object]]:
    """The rows of the table under ``### heading`` (or ``## heading``) whose default cell
    starts with a literal in backticks: (key, value as YAML reads it)."""
    text = DOCS.read_text()
    section = re.split(rf"^##+ {re.escape(heading)}\s*$", text, flags=re.MULTILINE)[1]
    section = re.split(r"^##", section, flags=re.MULTILINE)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) < 3 or not cells[0].startswith("`") or cells[0].count("`") != 2:
            continue
        literal = re.match(r"`([^`]*)`", cells[2])
        if literal:
            rows.append((cells[0].strip("`"), yaml.safe_load(literal.group(1) or '""')))
    return rows


def test_the_shipped_daemon_config_holds_every_built_in_default(tmp_path: Path) -> None:
    shipped = vars(load_daemon_config(ETC / "uploaderd.yaml", env={})) | {"file": None}
    assert shipped == vars(daemon_config(tmp_path, {})) | {"file": None}


def test_the_daemon_table_gives_the_code_defaults(tmp_path: Path) -> None:
    rows = documented_defaults("Daemon config: `uploaderd.yaml`")
    assert len(rows) >= 12
    built_in = vars(daemon_config(tmp_path, {})) | {"file": None}
    for key, value in rows:
        assert vars(daemon_config(tmp_path, nested(key, value))) | {"file": None} == built_in, key


@pytest.mark.parametrize("heading", sorted(JOB_SECTIONS))
def test_each_job_table_gives_the_code_defaults(heading: str) -> None:
    base = merged(MINIMAL_JOB, {"trigger": {"url": "http://127.0.0.1:9/"}})
    rows = documented_defaults(heading)
    assert rows, heading
    for key, value in rows:
        dotted = ".".join(filter(None, (JOB_SECTIONS[heading], key)))
        assert job(merged(base, nested(dotted, value))) == job(base), dotted


def leaves(document: dict[str, Any], prefix: str = "") -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for key, value in document.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in SAMPLE_EXAMPLES:
            out.extend(leaves(value, f"{dotted}."))
        else:
            out.append((dotted, value))
    return out


def test_the_sample_job_shows_the_code_defaults() -> None:
    text = (ETC / "jobs.d" / "example.yaml.sample").read_text()
    sample = dict(YamlDocument(None, text).root().data)  # as the loader reads it: `on` is a key
    shown = [(k, v) for k, v in leaves(sample) if k not in SAMPLE_EXAMPLES]
    assert len(shown) >= 20
    base = merged(MINIMAL_JOB, {"trigger": {"url": "http://127.0.0.1:9/"}})
    for key, value in shown:
        assert job(merged(base, nested(key, value))) == job(base), key
