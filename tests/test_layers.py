"""The house's floors (docs/design.md, "Rooms"): no module imports from a floor above its own, and no modules
import each other in a circle, not even under TYPE_CHECKING or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# A room (the first name under hrexp, or the hydra_plugins package) and its floor, as docs/design.md draws them.
FLOORS = {
    "hydra_plugins": 8,
    "cli": 7, "compare": 7,
    "jobs": 6,
    "callbacks": 5,
    "tasks": 4,
    "training": 3,
    "evaluation": 2, "prediction": 2, "export": 2, "reports": 2, "refine": 2,
    "models": 1, "codecs": 1, "losses": 1, "metrics": 1, "data": 1, "conformal": 1,
    "errors": 0, "startup": 0, "run_record": 0, "geometry": 0, "utils": 0, "conf": 0, "__init__": 0,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts)


def room(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "hydra_plugins":
        return "hydra_plugins"
    return parts[1] if len(parts) > 1 else "__init__"


def hrexp_imports(path: Path, module: str) -> set[str]:
    """Every hrexp module ``path`` imports, wherever the import stands (top, function, TYPE_CHECKING)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names = [f"{base}.{node.module}" if node.module else base]
            else:
                names = [node.module or ""]
            # `from hrexp.x import y` may name a submodule y: count it when it is one
            names += [f"{names[0]}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name.split(".")[0] == "hrexp")
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets = {t for t in hrexp_imports(path, module) if t in files}
        graph[module] = targets - {module}
    return graph


def test_every_room_has_a_floor():
    rooms = {room(m) for m in import_graph()}
    assert rooms <= set(FLOORS), f"rooms without a floor in this test and docs/design.md: {sorted(rooms - set(FLOORS))}"


def test_no_module_imports_from_a_floor_above_its_own():
    upward = [f"{m} (floor {FLOORS[room(m)]}) imports {t} (floor {FLOORS[room(t)]})"
              for m, targets in import_graph().items() for t in sorted(targets)
              if FLOORS.get(room(t), 0) > FLOORS.get(room(m), 0)]
    assert not upward, "imports that run up:\n" + "\n".join(upward)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module: each is a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_no_modules_import_each_other():
    # A package's __init__ importing its own submodules is how packages work, not a circle of rooms.
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in import_graph().items()}
    assert strongly_connected(graph) == []


@pytest.mark.parametrize("graph, expected", [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set()}, []),
])
def test_the_circle_finder_finds_circles(graph, expected):
    assert strongly_connected(graph) == expected


def test_the_floor_check_sees_an_import_inside_a_function(tmp_path):
    # The imports this test must see are often inside functions (to defer a heavy import) or TYPE_CHECKING blocks.
    code = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hrexp.jobs.train_run import run_job\n" \
           "def f():\n    from hrexp.tasks import base\n"
    path = tmp_path / "x.py"
    path.write_text(code)
    assert hrexp_imports(path, "hrexp.data.x") >= {"hrexp.jobs.train_run", "hrexp.tasks.base"}


def test_every_config_exists_once():
    """conf/ at the top is the one copy: no YAML inside the package, and no two YAML files alike."""
    root = SRC.parent
    assert not list(SRC.rglob("*.yaml")) or all("metadata" in p.parts for p in SRC.rglob("*.yaml")), \
        "configs inside src/: they belong in conf/ (the package's keypoint metadata files excepted)"
    files = [p for p in root.rglob("*.yaml") if not {".venv", ".git", "logs", ".cache"} & set(p.parts)]
    by_text: dict[str, list[Path]] = {}
    for path in files:
        by_text.setdefault(path.read_text().strip(), []).append(path.relative_to(root))
    twice = [paths for paths in by_text.values() if len(paths) > 1]
    assert not twice, f"the same YAML in several files: {twice}"
