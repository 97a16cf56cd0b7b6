"""The package's import graph has no cycle.

Every module of electra_fast (``electra_fast.kernels`` included) is imported in a fresh
interpreter, which also says where each module's source is; then an AST scan of every source
collects its imports of other package modules, at module level and inside functions alike (a
lazy import hides a cycle from import time, not from a reader), and the graph must be acyclic.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

# electra_fast.kernels is installed from kernels/ (setup.py), outside electra_fast/: walked on its own
IMPORT_ALL = """
import importlib, json, pkgutil
names = []
for package in ("electra_fast", "electra_fast.kernels"):
    pkg = importlib.import_module(package)
    names += [package] + [m.name for m in pkgutil.walk_packages(pkg.__path__, package + ".")]
files = {}
for name in names:
    mod = importlib.import_module(name)
    files[name] = getattr(mod, "__file__", None)
print(json.dumps(files))
"""


def package_modules() -> dict[str, str]:
    """name -> source file of every module of electra_fast, each imported in one fresh interpreter."""
    res = subprocess.run([sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def package_imports(name: str, path: str, modules: set[str]) -> set[str]:
    """The package modules that module ``name`` (source at ``path``) imports, anywhere in its body."""
    is_package = Path(path).name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:  # "from pkg import mod" imports the submodule, "from mod import x" the module
                target = f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                if target in modules:
                    out.add(target)
    out.discard(name)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None when it has none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        path.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return path[path.index(v):] + [v]
            if v not in state and (cycle := visit(v)):
                return cycle
        path.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (cycle := visit(u)):
            return cycle
    return None


def test_find_cycle_on_graphs_worked_out_by_hand():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # a diamond is no cycle
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"y2"}, "y2": {"y"}}) == ["y", "y2", "y"]


def test_package_imports_resolve_relative_and_lazy_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from . import a\nfrom .b import thing\nimport os\n"
                   "def f():\n    from .kernels import k\n    import pkg.c\n")
    modules = {"pkg", "pkg.m", "pkg.a", "pkg.b", "pkg.c", "pkg.kernels", "pkg.kernels.k"}
    assert package_imports("pkg.m", str(src), modules) == {"pkg.a", "pkg.b", "pkg.kernels.k", "pkg.c"}


def test_every_module_imports_and_the_import_graph_has_no_cycle():
    files = package_modules()
    assert {"electra_fast.bench", "electra_fast.proxies", "electra_fast.harness", "electra_fast.kernels.dispatch"} \
        <= set(files)
    sources = {name: path for name, path in files.items() if path and path.endswith(".py")}
    graph = {name: package_imports(name, path, set(files)) for name, path in sources.items()}
    assert "electra_fast.harness" in graph["electra_fast.bench"] and "electra_fast.harness" in graph[
        "electra_fast.proxies"]
    # finetune and squad share the fine-tuning recipe; squad never imports finetune
    assert "electra_fast.recipe" in graph["electra_fast.squad"] and "electra_fast.finetune" not in graph[
        "electra_fast.squad"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
