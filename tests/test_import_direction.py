"""Imports go one way: envs <- rollout <- aggregation <- learners <- cluster.

A module may import its own package and the packages below it; `cluster/metrics.py` and
`cluster/logging.py` are leaves every package may use (they import nothing from Harvest). The
walk reads the source (AST), so imports inside functions count, and so do strings that name a
Harvest module (`"harvest.learners.policy:load_torch_policy"` loaded by name is still a
dependency). No module imports, directly or through others, itself.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("envs", "rollout", "aggregation", "learners", "cluster")
LEAVES = {"harvest.cluster.metrics", "harvest.cluster.logging"}
_MODULE_STRING = re.compile(r"(?:harvest\.)?((?:%s)(?:\.\w+)+)(?::\w+)?" % "|".join(LAYERS))


def library_modules() -> dict[str, Path]:
    modules = {}
    for layer in LAYERS:
        for path in sorted((REPO / layer).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(["harvest", *parts])] = path
    return modules


MODULES = library_modules()


def _resolve(name: str) -> str | None:
    """The library module `name` refers to: itself, or the module holding the attribute it names."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path) -> dict[str, int]:
    """Library modules `module` imports (line of the first mention), strings naming one included."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        target = _resolve(name)
        if target is not None and target != module:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                add(f"{base}.{alias.name}", node.lineno)  # a submodule, or an attribute of `base`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = _MODULE_STRING.fullmatch(node.value)
            if match:
                add(f"harvest.{match.group(1)}", node.lineno)
    return found


GRAPH = {module: imports_of(module, path) for module, path in MODULES.items()}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[1])


def test_the_walk_sees_every_kind_of_import():
    found = imports_of(
        "harvest.rollout.example",
        _write(
            "from harvest.envs.spaces import ColumnSpec\n"
            "from ..envs import registry\n"
            "def f():\n    import harvest.aggregation.dataset\n"
            "LOADER = 'harvest.learners.policy:load_torch_policy'\n"
        ),
    )
    assert set(found) == {
        "harvest.envs.spaces",
        "harvest.envs.registry",
        "harvest.aggregation.dataset",
        "harvest.learners.policy",
    }


def _write(source: str) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "example.py"
    path.write_text(source)
    return path


def test_no_module_imports_a_package_above_its_own():
    upward = [
        f"{MODULES[module].relative_to(REPO)}:{line} imports {target}"
        for module, targets in GRAPH.items()
        for target, line in targets.items()
        if target not in LEAVES and layer(target) > layer(module)
    ]
    assert not upward, (
        "imports against the direction envs <- rollout <- aggregation <- learners <- cluster:\n" + "\n".join(upward)
    )


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_the_allowed_leaves_import_nothing_from_harvest(leaf):
    assert not GRAPH[leaf], f"{leaf} must stay a leaf; it imports {sorted(GRAPH[leaf])}"


def test_no_module_imports_itself_through_others():
    """Tarjan's strongly connected components over the module graph: every component is one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, "modules that import each other: " + "; ".join(" <-> ".join(cycle) for cycle in cycles)
