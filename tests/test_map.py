"""The house keeps to its map: every module is on CONTRIBUTING's map, the ways in
(CLI, HTTP API, annotate, the Client) reach the ledger only through the core, SQL
stays in ``docqueue/db/`` and the adapters named here, and no two modules import
each other when loaded.  Read from the source (``tests/importgraph.py``): nothing is
imported."""

from __future__ import annotations

import ast

import pytest
from importgraph import ROOT, Module, circles, modules

#: The ways in: they call the application core (docqueue.core), never the ledger.
ENTRY_POINTS = ("docqueue.cli", "docqueue.api", "docqueue.annotate", "docqueue.producer.client")
#: Modules besides docqueue.db that may import SQLAlchemy: they read and write the
#: operator's own tables (a schedule's source and its write-back target), or are the
#: worker's adapters over the ledger.
SQL_ADAPTERS = {
    "docqueue.schedules.sources",
    "docqueue.schedules.writeback",
    "docqueue.worker.store",
    "docqueue.worker.ledger",
}


@pytest.fixture(scope="module")
def found() -> dict[str, Module]:
    return modules()


def map_entries() -> set[str]:
    """The paths CONTRIBUTING's map names (``docqueue/api/jobs.py``, ``docqueue/db/``)."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    block = text.split("## Where things are", 1)[1].split("```", 2)[1]
    entries: set[str] = set()
    stack: list[str] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        names = _names(line)
        if not names:
            continue  # a description's next line
        del stack[depth:]
        for name in names:
            entries.add("".join(stack) + name)
        if names[-1].endswith("/"):
            stack.append(names[-1])
    return entries


def _names(line: str) -> list[str]:
    """The names a map line starts with: ``jobs.py, documents.py   what they do``."""
    names = []
    for token in line.split():
        name = token.rstrip(",")
        if not name.endswith((".py", "/")):
            break
        names.append(name)
        if not token.endswith(","):
            break
    return names


def test_every_module_is_on_contributings_map(found):
    on_map = map_entries()
    missing = [
        str(m.path.relative_to(ROOT))
        for m in found.values()
        if m.path.name not in ("__init__.py", "__main__.py")
        and str(m.path.relative_to(ROOT)) not in on_map
    ]
    assert not missing, f"add these to CONTRIBUTING.md's map (Where things are): {missing}"
    gone = [e for e in on_map if e.endswith(".py") and not (ROOT / e).exists()]
    assert not gone, f"CONTRIBUTING.md's map names modules that are not there: {gone}"


def _within(name: str, packages: tuple[str, ...] | set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def test_the_ways_in_reach_the_ledger_only_through_the_core(found):
    reaching = {
        m.name: sorted(i for i in m.imports if _within(i, ("docqueue.db", "sqlalchemy")))
        for m in found.values()
        if _within(m.name, ENTRY_POINTS)
    }
    assert not {k: v for k, v in reaching.items() if v}, "call docqueue.core instead"


def test_sqlalchemy_is_imported_only_by_the_ledger_and_the_named_adapters(found):
    importing = sorted(
        m.name
        for m in found.values()
        if "sqlalchemy" in m.imports
        and not _within(m.name, ("docqueue.db",))
        and m.name not in SQL_ADAPTERS
    )
    assert not importing, "move the SQL into docqueue/db/ (or name the adapter here)"


def test_no_two_modules_import_each_other_when_loaded(found):
    assert circles(found) == []


def test_compatibility_shims_hold_only_imports(found):
    """A module kept for old import paths says so in its docstring's first line and
    holds nothing but imports (and ``__all__``)."""
    for module in found.values():
        tree = ast.parse(module.path.read_text())
        doc = ast.get_docstring(tree) or ""
        if not doc.lower().startswith("compatibility"):
            continue
        for node in tree.body[1:]:
            kept = isinstance(node, (ast.Import, ast.ImportFrom)) or (
                isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__"
            )
            assert kept, f"{module.name}: a shim holds only imports ({ast.unparse(node)[:60]})"


def test_the_map_reader_sees_what_is_missing(found):
    """The checks above can fail: a module not on the map, and a made-up circle."""
    fake = Module("docqueue.not_on_map", ROOT / "docqueue" / "not_on_map.py")
    assert str(fake.path.relative_to(ROOT)) not in map_entries()
    pair = {
        "a": Module("a", ROOT, eager={"b"}),
        "b": Module("b", ROOT, eager={"a"}),
    }
    assert circles(pair) == [["a", "b"]]
