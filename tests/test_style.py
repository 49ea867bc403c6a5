"""The code is kept as configured in pyproject.toml: ruff finds nothing."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_module

ROOT = Path(__file__).parent.parent


def test_ruff_finds_nothing():
    require_module("ruff")
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]


@pytest.mark.slow
def test_mypy_strict_finds_nothing():
    """Type hints on every function of the package, checked strictly (pyproject.toml's [tool.mypy])."""
    require_module("mypy")
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-1000:]


#: The pipeline's stages, lowest first: a module may import only from its own stage or the ones before it
#: (parse → derive → render | lower → emit → verify → the command line and the package face).
STAGES = [
    {"softgrad._version", "softgrad.errors", "softgrad.budget", "softgrad.files", "softgrad.tolerances"},
    {"softgrad.derive"},
    {"softgrad.render", "softgrad.codegen"},
    {"softgrad.verify"},
    {"softgrad.cli", "softgrad", "softgrad.__main__"},
]


def _import_graph() -> dict[str, set[str]]:
    """Module → the softgrad modules it imports (anywhere in it: in functions and under TYPE_CHECKING too).
    `from package import module` counts as an import of that module, not of the package's face."""
    import ast

    modules = {}
    for path in (ROOT / "softgrad").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                            for alias in node.names}
        graph[module] = {resolved for t in targets if t.startswith("softgrad")
                         if (resolved := resolve(t)) is not None and resolved != module}
    return graph


def _stage(module: str) -> int:
    for number, stage in enumerate(STAGES):
        if module in stage or any(module.startswith(prefix + ".") for prefix in stage if prefix != "softgrad"):
            return number
    raise AssertionError(f"{module} belongs to no stage of STAGES")


def test_no_import_circle_and_no_import_up_the_pipeline():
    """Layers that read as the pipeline: no circle of imports (however lazy), and no stage reaching into a
    later one (derive does not import render; render and codegen do not import each other)."""
    graph = _import_graph()
    upward = [(m, t) for m, targets in graph.items() for t in targets if _stage(t) > _stage(m)]
    assert not upward, upward
    sideways = [(m, t) for m, targets in graph.items() for t in targets
                if _stage(m) == 2 and _stage(t) == 2 and m.split(".")[1] != t.split(".")[1]]
    assert not sideways, sideways
    # Tarjan's strongly connected components: a component of more than one module is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    assert not circles, circles
