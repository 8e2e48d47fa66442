"""The module structure: no import cycles in harness/ and methods/, the adapter imports no method, and
a Ray worker starting a cell loads no torch. Read from the sources (ast), and one real import."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "methods")


def modules(root: Path = REPO) -> dict[str, Path]:
    """Dotted name -> source file of every module of the packages (a package is its __init__.py)."""
    found = {}
    for package in PACKAGES:
        for file in (root / package).rglob("*.py"):
            parts = list(file.relative_to(root).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports_of(file: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a file imports, at the top or inside functions (a lazy import still runs),
    leaving out imports for type checkers only. ``from a import b`` is module a.b when there is one."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name in known)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    sub = f"{child.module}.{alias.name}"
                    if sub in known:
                        found.add(sub)
                    elif child.module in known:
                        found.add(child.module)
            visit(child)

    visit(ast.parse(file.read_text()))
    return found


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports_of(file, known) for name, file in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, or of one that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    """The check can fail: two modules that import each other, one of them lazily, are a cycle."""
    (tmp_path / "harness").mkdir()
    (tmp_path / "methods").mkdir()
    (tmp_path / "harness" / "a.py").write_text("from harness.b import f\n")
    (tmp_path / "harness" / "b.py").write_text("def f():\n    from harness import a\n")
    (tmp_path / "harness" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                               "    from harness import a\nfrom harness.b import f\n")
    graph = import_graph(tmp_path)
    assert graph["harness.b"] == {"harness.a"} and graph["harness.c"] == {"harness.b"}
    assert cycles(graph) == [["harness.a", "harness.b"]]


def test_no_import_cycles_in_harness_and_methods():
    graph = import_graph()
    assert "harness.bench.executors.base" in graph["harness.bench.executors.ray"]  # the graph sees real imports
    assert cycles(graph) == []


def test_the_adapter_imports_no_method():
    """Every method builds on methods.arch; custom edits reach it as replayers, never through an import."""
    assert import_graph()["methods.arch"] <= {"methods.errors"}


def test_a_ray_worker_starting_a_cell_loads_no_torch():
    code = ("import sys, harness.bench.executors.ray; "
            "sys.exit(sorted(m for m in ('torch', 'transformers') if m in sys.modules) != [])")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


# The layers of the code, bottom first: a module may import its own layer and those below it, never one above.
# A name matches a module and everything under it; the longest matching name decides.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("methods",),  # the algorithms: they know models, never the harness
    ("harness", "harness.errors", "harness.schema", "harness.files", "harness.paths", "harness.logs",
     "harness.progress", "harness.hub", "harness.env", "harness.stats", "harness.manifest", "harness.outputs",
     "harness.devices", "harness.slow_tokenizer", "harness.profiles"),  # plumbing
    ("harness.checkpoint", "harness.models", "harness.data", "harness.export", "harness.engine"),  # models, data
    ("harness.pruning_report", "harness.pruning", "harness.prune_cache"),  # pruning a model
    ("harness.metrics", "harness.recovery"),  # measuring and healing one model
    ("harness.hashing", "harness.results"),  # the records of a cell
    ("harness.bench", "harness.recovery.stage"),  # running cells (a cell's recovery stage, cached by harness.hashing)
    ("harness.report",),  # reporting runs: leaderboards, plots, samples, publishing, repro
    ("harness.cli",),
)
# The package's one-line reload (``from harness import load_pruned``) imports the checkpoint lazily.
FACADES = {("harness", "harness.checkpoint")}


def layer_of(module: str) -> int:
    matches = [(len(name), i) for i, names in enumerate(LAYERS) for name in names
               if module == name or module.startswith(name + ".")]
    if not matches:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if layer_of(b) > layer_of(a) and (a, b) not in FACADES)


def test_the_layer_check_finds_an_upward_import(tmp_path):
    (tmp_path / "harness" / "bench").mkdir(parents=True)
    (tmp_path / "methods").mkdir()
    (tmp_path / "harness" / "stats.py").write_text("def f():\n    from harness.bench import runner\n")
    (tmp_path / "harness" / "bench" / "runner.py").write_text("from harness import stats\n")
    assert upward_imports(import_graph(tmp_path)) == ["harness.stats -> harness.bench.runner"]


def test_imports_point_down():
    assert upward_imports(import_graph()) == []
