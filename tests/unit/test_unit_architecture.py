"""The architecture's promises, checked: which folder may import which (docs/architecture.md,
"Modules"), who may import an I/O library, and one set of named queries in
sql/queries.sql, ledger/store.py and docs/database.md."""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from uploaderd.cli import COMMANDS as COMMAND_MODULES
from uploaderd.commands.common import Parsers

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "uploaderd"
# The folders from the bottom up: a module imports from its own folder or a folder below.
# discovery and upload share a rank: neither imports the other.
RANK = {
    "errors": 0,
    "policy": 1,
    "config": 2,
    "ledger": 3,
    "observe": 4,
    "discovery": 5,
    "upload": 5,
    "daemon": 6,
    "commands": 7,
    "cli": 8,
    "__main__": 9,
}
ONLY = {
    "psycopg2": {"ledger.store"},
    "watchdog": {"discovery.watcher"},
    "boto3": {"upload"},
    "botocore": {"upload"},
    "obstore": {"upload"},
    "mypy_boto3_s3": {"upload"},
}  # a library → the modules, or whole folders, that may import it
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


def module_name(path: Path) -> str:
    """``uploaderd/upload/workers.py`` → ``upload.workers``; a package's ``__init__`` is the
    package itself (``upload``), the top's is ``__init__``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(module: str) -> set[str]:
    """Every module ``module`` imports, at the top or in a function: an uploaderd module by its
    name here (``upload.workers``, ``__init__`` for ``uploaderd`` itself), anything else by
    its top-level name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if not name.startswith("uploaderd."):
                found.add(name.split(".")[0])
                continue
            dotted = name.removeprefix("uploaderd.")
            # ``from uploaderd.x import y``: y is a module of package x, or a name in module x.
            found.add(dotted if dotted in MODULES else dotted.rsplit(".", 1)[0] or "__init__")
    return found


def folder(module: str) -> str:
    return module.split(".")[0]


def rank(module: str) -> int:
    return -1 if module == "__init__" else RANK[folder(module)]  # __version__, imported by all


GRAPH = {module: imports(module) for module in sorted(MODULES)}


def wrong_way(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Every import of a module in a folder above, or in another folder of the same rank."""
    return {
        (module, name)
        for module, names in graph.items()
        for name in names
        if name in MODULES and folder(name) != folder(module) and rank(name) >= rank(module)
    }


def test_every_module_sits_in_a_ranked_folder() -> None:
    assert {folder(m) for m in MODULES} - {"__init__"} <= set(RANK)


def test_no_folder_imports_one_above_it_or_beside_it() -> None:
    assert wrong_way(GRAPH) == set()


def test_the_rule_catches_a_wrong_import() -> None:
    assert wrong_way({"ledger.store": {"discovery.scanner"}}) == {
        ("ledger.store", "discovery.scanner")
    }
    assert wrong_way({"upload.workers": {"discovery.scanner"}})  # beside it
    assert wrong_way({"policy.retry": {"config.settings"}})


@pytest.mark.parametrize("library", sorted(ONLY))
def test_a_library_is_imported_only_by_its_modules(library: str) -> None:
    importers = {m for m, names in GRAPH.items() if library in names}
    assert {
        m for m in importers if m not in ONLY[library] and folder(m) not in ONLY[library]
    } == set()


def test_the_pure_policies_import_no_io() -> None:
    policies = [m for m in MODULES if folder(m) == "policy"]
    assert len(policies) > 10
    assert {(m, lib) for m in policies for lib in GRAPH[m] & IO} == set()


def test_only_the_command_line_imports_the_commands() -> None:
    importers = {
        m for m, names in GRAPH.items() for n in names if n in MODULES and folder(n) == "commands"
    }
    assert {folder(m) for m in importers} <= {"commands", "cli"}


@pytest.mark.parametrize("module", COMMAND_MODULES, ids=lambda m: m.__name__)
def test_each_command_sits_in_the_module_of_its_name(module: ModuleType) -> None:
    root = argparse.ArgumentParser()
    parsers = Parsers(root.add_subparsers(), argparse.ArgumentParser(add_help=False))
    module.add_parser(parsers)
    assert set(parsers.commands.choices) == {module.__name__.rsplit(".", 1)[1].replace("_", "-")}


def test_the_command_line_lists_every_command_module() -> None:
    listed = {module.__name__.removeprefix("uploaderd.") for module in COMMAND_MODULES}
    with_parsers = {m for m, path in MODULES.items() if "def add_parser(" in path.read_text()}
    assert listed == with_parsers
    assert len(listed) == 14


def test_the_light_commands_load_no_heavy_library() -> None:
    """status, files and explain start fast: importing the command line loads none of what
    only the daemon, S3 or a progress bar needs."""
    heavy = ("boto3", "botocore", "obstore", "rich", "watchdog", "apscheduler", "urllib3")
    code = (
        "import sys, uploaderd.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[1:]))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code, *heavy], capture_output=True, text=True, check=True
    ).stdout
    assert loaded == "[]\n"


def ledger_names() -> set[str]:
    """The query names ledger/store.py uses: ``queries()["x"]``, ``self._all("x")``,
    ``self._dicts("x")``, ``self._execute(cursor, "x", ...)``; anything but a literal name is
    refused."""
    names = set()
    for node in ast.walk(ast.parse((PACKAGE / "ledger" / "store.py").read_text())):
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
