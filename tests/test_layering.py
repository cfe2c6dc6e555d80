"""One import direction: a module of nowt imports only modules to its left in ORDER (or leaf utilities), at
module level, inside functions and under `if TYPE_CHECKING:` alike, so there is no cycle at all, not even one
for type hints (where a module needs the type of one that imports it, a Protocol describes what it reads)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "nowt"
#: Leaf utilities: anyone may import them; they import only torch.
LEAVES = ("distributed", "checkpoint", "progress", "provenance")
#: Left to right; a module may import only those before it (and the other modules of its own package).
ORDER = ("ops", "rules", "lc", "layers", "attention", "inventory", "first_use", "conversion", "mirroring",
         "metrics", "feedback_scale", "noise_measures", "optim", "noise", "theory", "models", "targetprop",
         "data", "train", "figures", "report", "reproduce", "integrations", "cli", "__main__")
#: Every component is checked.
CHECKED = ORDER


def _imports(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in `tree`, at any depth (under `if TYPE_CHECKING` too)."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from nowt import lc` imports the module nowt.lc; `from nowt.x import name` imports nowt.x
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _component(module: str) -> str | None:
    """The top-level part of nowt a module belongs to ("rules" for nowt.rules.dfa.storage); None outside nowt
    and for the package itself."""
    parts = module.split(".")
    return parts[1] if parts[0] == "nowt" and len(parts) > 1 else ("nowt" if module == "nowt" else None)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


def _violations(module: str, path: Path) -> list[str]:
    own = _component(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    bad = []
    for line, target in _imports(ast.parse(path.read_text()), package):
        other = _component(target)
        if other is None or other == own or other in LEAVES:
            continue
        rank = ORDER.index(own) if own in ORDER else len(ORDER)
        if other == "nowt" or other not in ORDER or ORDER.index(other) >= rank:
            bad.append(f"{path.relative_to(SRC.parent)}:{line} imports {target}")
    return bad


@pytest.mark.parametrize("component", CHECKED)
def test_imports_point_left(component):
    bad = [v for module, path in _modules().items() if _component(module) == component
           for v in _violations(module, path)]
    assert not bad, "imports against the order " + " -> ".join(ORDER) + ":\n" + "\n".join(bad)


def test_leaves_import_only_torch():
    for leaf in LEAVES:
        path = SRC / f"{leaf}.py"
        targets = [t for _, t in _imports(ast.parse(path.read_text()), "nowt")]
        assert not [t for t in targets if _component(t)], (leaf, targets)


def test_order_names_every_component():
    components = {_component(m) for m in _modules()} - {"nowt"}
    assert set(CHECKED) <= set(ORDER)
    assert components - set(ORDER) - set(LEAVES) == set(), components - set(ORDER) - set(LEAVES)


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The module an import names: `nowt.rules.base.Rule` -> `nowt.rules.base`."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def test_no_cycle_inside_a_checked_package():
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        if _component(module) in CHECKED:
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            targets = {_resolve(t, modules) for _, t in _imports(ast.parse(path.read_text()), package)}
            graph[module] = {t for t in targets if t and t != module and _component(t) == _component(module)}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(trail + [node, nxt])
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
