"""The module graph of dnnspec has no cycles: data flows one way (text -> AST -> IR -> engine / export).

Every ``import`` of every module is read with :mod:`ast`, at module level and inside
functions alike (a lazy import still ties two modules together), relative imports
resolved against the importing module's package. ``from PKG import NAME`` is an edge
to ``PKG.NAME`` when that is a module, else to ``PKG``. Importing a submodule also runs
its parent packages' ``__init__``, but Python does that without the parent importing
the child back, so parents are not edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "dnnspec"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The dnnspec modules ``name`` (at ``path``) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return {_known_prefix(m, known) for m in found if m == "dnnspec" or m.startswith("dnnspec.")} - {name, None}


def _known_prefix(module: str, known: set[str]) -> str | None:
    """``module`` or its nearest enclosing known module (``import dnnspec.engine.net as n`` names a module)."""
    while module and module not in known:
        module = module.rpartition(".")[0]
    return module or None


def import_graph() -> dict[str, set[str]]:
    mods = all_modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_reader_sees_function_level_and_relative_imports(tmp_path):
    """The checker itself: a lazy relative import inside a function is an edge, and a loop is found."""
    graph = import_graph()
    assert "dnnspec.engine.init" in graph["dnnspec.engine.net"]  # from .init import init_param
    assert "dnnspec.ir" in graph["dnnspec.engine.base"]  # from ..ir import Layer
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    lazy = tmp_path / "m.py"
    lazy.write_text("def f():\n    from .engine import net\n    from ..dnnspec import ir\n", "utf-8")
    known = {"dnnspec", "dnnspec.engine", "dnnspec.engine.net", "dnnspec.ir", "dnnspec.m"}
    assert imports_of("dnnspec.m", lazy, known) == {"dnnspec.engine.net", "dnnspec.ir"}


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    if cycle:
        pytest.fail("import cycle among dnnspec's modules: " + " -> ".join(cycle)
                    + " (data flows text -> AST -> IR -> engine / export; see docs/architecture.md)")


def reach(start: str, graph: dict[str, set[str]]) -> set[str]:
    """Every module ``start`` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    return seen - {start}


@pytest.mark.parametrize("lower, upper", [
    ("dnnspec.registry", "dnnspec.ir"), ("dnnspec.ir", "dnnspec.frontend"), ("dnnspec.ir", "dnnspec.engine"),
    ("dnnspec.registry", "dnnspec.engine"), ("dnnspec.registry", "dnnspec.export"),
    ("dnnspec.checkpoint", "dnnspec.engine"), ("dnnspec.export.runs", "dnnspec.engine"),
    ("dnnspec.export.onnx_export", "dnnspec.engine"), ("dnnspec.frontend", "dnnspec.summary"),
])
def test_lower_layers_do_not_reach_upper_ones(lower, upper):
    """The registry and the IR know nothing of the front end, the engine or the export; checkpoints and
    the export read (model, arrays) without the engine; the front end does not print."""
    found = [m for m in reach(lower, import_graph()) if m == upper or m.startswith(upper + ".")]
    assert not found, f"{lower} reaches {found[0]} through its imports"


def test_the_engine_reads_no_text():
    """Specs become IR in the front end; the engine starts from the IR (dnnspec.api joins the two)."""
    graph = import_graph()
    for name, imports in graph.items():
        if name.startswith("dnnspec.engine"):
            assert not imports & {"dnnspec.frontend", "dnnspec.parser"}, f"{name} parses text"
