"""The architecture's promises, checked: who may import what (docs/architecture.md, "Import
rules"), and one set of named queries in sql/queries.sql, ledger.py and docs/database.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "uploaderd"
S3 = {"storage", "objectput", "uploader", "multipart", "verify"}
ONLY = {
    "psycopg2": {"ledger"},
    "watchdog": {"watcher"},
    "boto3": S3,
    "botocore": S3,
    "obstore": S3,
    "mypy_boto3_s3": S3,
}  # a library → the modules that may import it
POLICIES = {
    "settle",
    "retry",
    "health",
    "bandwidth",
    "sessions",
    "units",
    "windows",
    "filters",
    "keys",
    "printable",
    "inflight",
}
IO = {
    "psycopg2",
    "boto3",
    "botocore",
    "obstore",
    "watchdog",
    "apscheduler",
    "urllib3",
    "prometheus_client",
    "rich",
    "sdnotify",
    "socket",
    "subprocess",
}
# What the command line runs; imported by the command line only (``uploaderd run`` included).
COMMANDS = {
    "cli",
    "adhoc",
    "checks",
    "collect",
    "explain",
    "importer",
    "oneshot",
    "progress",
    "register",
    "service",
    "verify",
}


def imports(module: str) -> set[str]:
    """Every module ``module`` imports, at the top or in a function: ``uploaderd.x`` as
    ``x``, anything else by its top-level name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [
                f"{node.module}.{a.name}" if node.module == "uploaderd" else node.module
                for a in node.names
            ]
            if isinstance(node, ast.ImportFrom) and node.module
            else []
        )
        found |= {n.split(".")[1] if n.startswith("uploaderd.") else n.split(".")[0] for n in names}
    return found


MODULES = {path.stem for path in PACKAGE.glob("*.py")}
GRAPH = {module: imports(module) for module in sorted(MODULES)}


def reach(module: str) -> set[str]:
    """``module`` and every uploaderd module it imports, directly or not."""
    seen, todo = {module}, [module]
    while todo:
        for name in GRAPH[todo.pop()] & MODULES - seen:
            seen.add(name)
            todo.append(name)
    return seen


@pytest.mark.parametrize("library", sorted(ONLY))
def test_a_library_is_imported_only_by_its_modules(library: str) -> None:
    assert {m for m, names in GRAPH.items() if library in names} <= ONLY[library]


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_the_pure_policies_reach_no_io_library(policy: str) -> None:
    assert {(m, lib) for m in reach(policy) for lib in GRAPH[m] & IO} == set()


def test_only_the_command_line_imports_the_commands() -> None:
    assert COMMANDS <= MODULES
    importers = {m for m, names in GRAPH.items() if names & COMMANDS}
    assert importers <= COMMANDS | {"__main__"}
    assert reach("service") & COMMANDS == {"service"}  # the daemon loads no command


def ledger_names() -> set[str]:
    """The query names ledger.py uses: ``queries()["x"]``, ``self._all("x")``,
    ``self._dicts("x")``, ``self._execute(cursor, "x", ...)``; anything but a literal name is
    refused."""
    names = set()
    for node in ast.walk(ast.parse((PACKAGE / "ledger.py").read_text())):
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "queries()":
            names.add(node.slice)
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("self._all", "self._dicts"):
            names.add(node.args[0])
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "self._execute":
            names.add(node.args[1])
    literal = {str(n.value) for n in names if isinstance(n, ast.Constant)}
    assert {ast.unparse(n) for n in names if not isinstance(n, ast.Constant)} == {"name"}
    return literal


def test_named_queries_are_one_set() -> None:
    sql = set(
        re.findall(r"^-- name: (\w+)\s*$", (REPO / "sql/queries.sql").read_text(), re.MULTILINE)
    )
    section = (REPO / "docs/database.md").read_text().split("## Named queries")[1]
    rows = [
        line.split("|")[1]
        for line in section.split("\n## ")[0].splitlines()
        if line.startswith("| `")
    ]
    documented = {name for cell in rows for name in re.findall(r"`(\w+)`", cell)}
    assert sql == ledger_names()
    assert sql == documented
