"""The layers are folders, and these tests are their boundary (README, "Layout"):

- story/, rundir/, engine/, outputs/ and webui/ run on the driver: importing any of their modules never imports torch;
- the engine never imports the worker side (worker/, attention/, backbones/, models/) nor outputs/;
- worker/, attention/ and backbones/ run inside the actors and never import Ray;
- outputs/ and the web UI never import the engine or the worker;
- no import cycles among the modules of storyadapter/ and bench/, counting imports inside functions too.

Each package is imported in a fresh interpreter, so what another test imported earlier hides nothing.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPO

PACKAGE = REPO / "storyadapter"

# package -> modules (or top-level packages) that importing any of its modules must not load
FORBIDDEN = {
    "story": ["torch"],
    "rundir": ["torch"],
    "engine": ["torch", "storyadapter.worker", "storyadapter.attention", "storyadapter.backbones", "storyadapter.models",
               "storyadapter.outputs"],
    "outputs": ["torch", "storyadapter.engine", "storyadapter.worker"],
    "webui": ["torch", "storyadapter.engine", "storyadapter.worker"],
    "worker": ["ray"],
    "attention": ["ray"],
    "backbones": ["ray"],
    "models": ["ray"],
}
# The top-level modules the launcher and the web UI read before anything heavy: torch and Ray load inside the
# functions that need them, so bad input is answered in well under a second.
TOP_LEVEL_TORCH_FREE = ["storyadapter.config", "storyadapter.spec", "storyadapter.methods", "storyadapter.errors",
                        "storyadapter.launch", "storyadapter.render_story"]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_of(folder: Path) -> list[str]:
    """Every importable module under `folder` (a `__main__` runs a program when imported: left out)."""
    return sorted(module_name(p) for p in folder.rglob("*.py") if p.name != "__main__.py")


def loaded_by(modules: list[str], extra_path: Path | None = None) -> dict[str, set[str]]:
    """Each of `modules` -> sys.modules once a fresh interpreter has imported it and the ones before it."""
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}:\n"
            "    importlib.import_module(m)\n"
            "    print(json.dumps([m, sorted(sys.modules)]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if extra_path:
        env["PYTHONPATH"] = str(extra_path)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('["')]
    return {m: set(loaded) for m, loaded in steps}


def violations(loaded: dict[str, set[str]], forbidden: list[str]) -> dict[str, list[str]]:
    """The first module whose import loads something forbidden -> those of `forbidden` it loads, or {}."""
    for module, present in loaded.items():
        hit = [f for f in forbidden if any(m == f or m.startswith(f + ".") for m in present)]
        if hit:
            return {module: hit}
    return {}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_on_its_side(package):
    modules = modules_of(PACKAGE / package)
    assert modules, package
    assert violations(loaded_by(modules), FORBIDDEN[package]) == {}


def test_the_config_crossing_and_the_launcher_load_neither_torch_nor_ray():
    assert violations(loaded_by(TOP_LEVEL_TORCH_FREE), ["torch", "ray"]) == {}


def test_an_import_across_the_boundary_is_seen(tmp_path):
    """The check itself: a module that imports the engine is caught, as one in outputs/ would be."""
    (tmp_path / "leaky.py").write_text("from storyadapter.engine import dispatch\n")
    assert violations(loaded_by(["storyadapter.errors", "leaky"], tmp_path), FORBIDDEN["outputs"]) == {
        "leaky": ["storyadapter.engine"]}
    assert violations(loaded_by(["storyadapter.errors"]), FORBIDDEN["outputs"]) == {}


# ---- import cycles ----

def import_graph(roots: list[Path]) -> dict[str, set[str]]:
    """module -> the modules it imports (anywhere in the file: top level, functions, TYPE_CHECKING blocks),
    among the modules under `roots`."""
    files = {module_name(p): p for root in roots for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module
                # `from pkg import name`: the submodule when `name` is one, else pkg itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a non-module attribute: its module
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_in_the_package_and_bench():
    graph = import_graph([PACKAGE, REPO / "bench"])
    assert len(graph) > 60 and sum(map(len, graph.values())) > 100  # the graph was read, not empty
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["e", "f"]]


def test_no_test_module_imports_another():
    """Shared fixtures live in conftest.py (pytest injects them) and shared helpers in tests/helpers/: a test module
    importing another runs that module's tests' set-up and couples their fates."""
    tests = REPO / "tests"
    pattern = re.compile(r"^\s*(?:from\s+(?:tests)?\.(?:test_\w+|conftest)\b|import\s+tests\.test_)", re.M)
    offenders = [p.name for p in sorted(tests.glob("*.py")) + sorted((tests / "helpers").glob("*.py"))
                 if pattern.search(p.read_text())]
    assert offenders == []
