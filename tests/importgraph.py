"""docqueue's import graph, read from the source with ``ast`` (nothing is imported):
which modules each module imports, at module level or inside functions, and the
circles among module-level imports.  ``python tests/importgraph.py`` prints the map:
lines per module, the largest functions, the circles."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "docqueue"


@dataclass
class Module:
    name: str
    path: Path
    #: Every module it imports, wherever the import statement is.
    imports: set[str] = field(default_factory=set)
    #: Those imported when it is imported (module level, outside ``if TYPE_CHECKING``).
    eager: set[str] = field(default_factory=set)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts and "versions" in path.parts:
            continue
        found[module_name(path)] = Module(module_name(path), path)
    for module in found.values():
        _read(module, set(found))
    return found


def _read(module: Module, known: set[str]) -> None:
    tree = ast.parse(module.path.read_text(), str(module.path))
    package = module.name if module.path.name == "__init__.py" else module.name.rpartition(".")[0]
    for node, eager in _imports(tree.body, eager=True):
        for name in _targets(node, package, known):
            module.imports.add(name)
            if eager:
                module.eager.add(name)


def _imports(body: list[ast.stmt], eager: bool) -> Iterator[tuple[ast.stmt, bool]]:
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, eager
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from _imports(node.body, False)
            yield from _imports(node.orelse, eager)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.stmt):
                    inner = eager and not isinstance(
                        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
                    )
                    yield from _imports([child], inner)


def _targets(node: ast.stmt, package: str, known: set[str]) -> Iterator[str]:
    """The modules an import statement names (external ones by their top name)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name if alias.name in known else alias.name.split(".")[0]
        return
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parts, base] if base else parts)
    if base not in known and not base.startswith("docqueue"):
        yield base.split(".")[0]
        return
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        yield sub if sub in known else base


def circles(found: dict[str, Module]) -> list[list[str]]:
    """Strongly connected groups of more than one module among eager imports
    (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for target in found[name].eager:
            if target not in found:
                continue
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in on_stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == name:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for name in found:
        if name not in index:
            visit(name)
    return groups


def functions(found: dict[str, Module]) -> Iterator[tuple[int, str]]:
    """(lines, qualified name) of every function and method."""
    for module in found.values():
        tree = ast.parse(module.path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                yield node.end_lineno - node.lineno + 1, f"{module.name}.{node.name}"


def main() -> None:
    found = modules()
    for module in found.values():
        lines = len(module.path.read_text().splitlines())
        print(f"{lines:6d}  {module.path.relative_to(ROOT)}")
    print("largest functions:")
    for lines, name in sorted(functions(found), reverse=True)[:5]:
        print(f"{lines:6d}  {name}")
    print("circles:", circles(found) or "none")


if __name__ == "__main__":
    main()
