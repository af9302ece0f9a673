"""The package's shape: imports only go down the layers, no cycles, no borrowed private names.

Read with ``ast`` (nothing is imported), so a violation anywhere in ``lenslib/`` or ``bench/``,
including an import inside a function, fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lenslib"

# Lower layers first; a module may import from its own layer or any layer before it.
LAYERS = ["errors", "core", "models", "lens", "tuned", "causal", "recall", "plotting", "reports",
          "cli", "provision", "checks"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module imported, names taken from it, line)`` for every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
    return found


def lenslib_edges(known: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the lenslib modules it imports (``from pkg import module`` counts as the module)."""
    edges = {}
    for name, path in known.items():
        targets = set()
        for module, names, _ in imports_of(path):
            if module != "lenslib" and not module.startswith("lenslib."):
                continue
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in known]
            targets |= set(subs) if subs else {module}
        edges[name] = {t for t in targets if t in known and t != name}
    return edges


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)  # lenslib/__init__.py: the public API sits on top of everything
    return LAYERS.index(parts[1])


def test_every_module_sits_in_a_named_layer():
    strays = [m for m in modules() if m != "lenslib" and m.split(".")[1] not in LAYERS]
    assert not strays, f"modules outside the layers {LAYERS}: {strays}"


def test_imports_only_go_down_the_layers():
    upward = []
    for module, targets in lenslib_edges(modules()).items():
        for target in targets:
            if target != "lenslib" and layer_of(target) > layer_of(module):
                upward.append(f"{module} imports {target}")
            if target == "lenslib" and module != "lenslib":
                upward.append(f"{module} imports the top-level package (import the module that defines it)")
    assert not upward, "\n".join(sorted(upward))


def test_the_import_graph_has_no_cycle():
    edges = lenslib_edges(modules())
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("folder", ["lenslib", "bench", "tests"])
def test_no_module_borrows_another_modules_private_names(folder):
    borrowed = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for module, names, line in imports_of(path):
            if not (module == "lenslib" or module.startswith("lenslib.")):
                continue
            borrowed += [f"{path.relative_to(ROOT)}:{line} takes {module}.{n}" for n in names
                         if n.startswith("_") and not n.startswith("__")]
    assert not borrowed, "\n".join(borrowed)


def test_the_checker_sees_a_cycle_and_a_private_import(tmp_path, monkeypatch):
    """The checks above can fail: two modules that import each other, one privately."""
    fake = tmp_path / "lenslib"
    (fake / "core").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "core" / "__init__.py").write_text("")
    (fake / "core" / "a.py").write_text("def f():\n    from lenslib.core.b import _g\n")
    (fake / "core" / "b.py").write_text("from lenslib.core.a import f\n")
    globals_ = globals()
    monkeypatch.setitem(globals_, "ROOT", tmp_path)
    monkeypatch.setitem(globals_, "PACKAGE", fake)
    with pytest.raises(AssertionError, match="lenslib.core.a -> lenslib.core.b"):
        test_the_import_graph_has_no_cycle()
    with pytest.raises(AssertionError, match="takes lenslib.core.b._g"):
        test_no_module_borrows_another_modules_private_names("lenslib")


@pytest.mark.parametrize("folder", ["lenslib", "bench", "tests"])
def test_every_name_imported_from_lenslib_exists(folder):
    """Imports inside functions run only when the function does: a renamed helper would break
    them silently until then (provision's tuned-lens step once imported a name that had gone)."""
    import importlib

    root = Path(__file__).resolve().parents[1]  # not ROOT: the checker's self-test points that elsewhere
    missing = []
    for path in sorted((root / folder).rglob("*.py")):
        for module, names, line in imports_of(path):
            if not (module == "lenslib" or module.startswith("lenslib.")):
                continue
            try:
                imported = importlib.import_module(module)
            except ImportError as error:
                missing.append(f"{path.relative_to(root)}:{line} {module}: {error}")
                continue
            missing += [f"{path.relative_to(root)}:{line} {module}.{n}" for n in names
                        if not hasattr(imported, n) and not _is_submodule(module, n)]
    assert not missing, "\n".join(missing)


def _is_submodule(module: str, name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(f"{module}.{name}") is not None
