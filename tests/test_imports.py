"""The package's import structure: no import cycle, no upward import between layers, every module imports in
a fresh interpreter, and ``import uqpot`` stays light.

Imports are read from the source (every ``import`` statement, also those inside functions: a lazy import
still ties two modules together).  Layers, lowest first; a module may import its own layer and those below:
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "uqpot"

LAYERS = [
    # core: errors, fields, units, strict config sections and their YAML, versions, threads, executors
    ["uqpot._version", "uqpot.core"],
    # structures, batches, neighbour lists, files, splits, the label store, the data-set readers
    ["uqpot.data"],
    # metrics (and their registry); the backbones and model files; the UQ-agnostic training engine
    ["uqpot.metrics"],
    ["uqpot.nn"],
    ["uqpot.train"],
    # the UQ methods
    ["uqpot.uq"],
    # a trained model at work: loading, predicting, evaluating
    ["uqpot.evaluation"],
    # what a model is used for: oracles, MD, samplers
    ["uqpot.oracle", "uqpot.md", "uqpot.sample"],
    # the run pipeline that knows UQ methods: run config, prepare, run, finetune, wrap, grids of runs
    ["uqpot.fit"],
    # the systems: their data builds (with an oracle), MD presets, criteria, attack rates, preset files
    ["uqpot.systems"],
    # the active-learning loop; reports; the studies; the command line; the package
    ["uqpot.loop"],
    ["uqpot.report"],
    ["uqpot.studies"],
    ["uqpot.cli"],
    ["uqpot"],
]


def modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        base = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = ".".join(base[:len(base) - node.level + 1] + [node.module] if node.level and node.module
                                  else base[:len(base) - node.level + 1] if node.level else [node.module or ""])
                names = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:  # the most specific module the statement names
                if name in mods and name != m:
                    graph[m].add(name)
                    break
    return graph


def layer(module: str) -> int:
    best = None
    for k, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and (best is None or len(p) > best[1]):
                best = (k, len(p))
    assert best is not None, f"{module} is in no layer of tests/test_imports.py: add it"
    return best[0]


def test_no_import_cycle():
    graph = import_graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_upward_import():
    graph = import_graph()
    upward = sorted(f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
                    for a, targets in graph.items() for b in targets if layer(b) > layer(a))
    assert not upward, "\n".join(upward)


def package_of(module: str) -> str:
    """The package a module belongs to at the top of uqpot (``uqpot.loop.md`` -> ``uqpot.loop``); the package's
    own root modules (``uqpot``, ``uqpot.__main__``, ``uqpot._version``) count as themselves."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_no_import_cycle_between_packages():
    """Package level: no two of uqpot's packages import each other, also through other packages."""
    edges: dict[str, set[str]] = {}
    for a, targets in import_graph().items():
        for b in targets:
            if package_of(a) != package_of(b) and package_of(b) != "uqpot":
                edges.setdefault(package_of(a), set()).add(package_of(b))

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for nxt in edges.get(node, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    circles = sorted(f"{a} -> {b} -> ... -> {a}" for a in edges for b in edges[a] if reaches(b, a))
    assert not circles, "\n".join(circles)


def test_the_root_holds_no_loose_module():
    """Every module lives in a package of its layer; at the root only the package itself, ``python -m uqpot``
    and the version."""
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "_version.py"], loose


def test_the_checks_see_imports():
    graph = import_graph()
    assert "uqpot.nn.response" in graph["uqpot.nn.potential"] and "uqpot.uq.options" in graph["uqpot.fit.config"]
    assert layer("uqpot.uq.gmm") == layer("uqpot.uq") > layer("uqpot.nn.potential")


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(modules())
    code = ("import importlib, sys\nbad = []\nfor name in sys.argv[1:]:\n    try:\n        importlib.import_module(name)\n"
            "    except Exception as exc:\n        bad.append(f'{name}: {type(exc).__name__}: {exc}')\nprint('\\n'.join(bad))\n"
            "sys.exit(1 if bad else 0)\n")
    res = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "PYTHONPATH": str(SRC)})
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("module", ["uqpot", "uqpot.core.fields", "uqpot.core.errors", "uqpot.core.schema"])
def test_light_modules_import_nothing_heavy(module):
    code = f"import sys, {module}; heavy = [m for m in ('torch', 'uqpot.uq', 'uqpot.evaluation.models') if m in sys.modules]; print(heavy)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(SRC)})
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_readme_layout_matches_the_tree():
    """Every module of the package is named in the README's Layout section, under its folder, and every
    module named there exists."""
    import re

    text = (SRC.parent / "README.md").read_text()
    block = text[text.index("## Layout"):].split("```")[1]
    named, folder = set(), ""
    for line in block.splitlines()[2:]:  # after the fence's language line and "src/uqpot/"
        if not line.startswith(" "):
            break  # configs/, benchmarks/, tests/: outside the package
        if not line.startswith("   "):  # a line of its own: a folder ("nn/  ..."), or top-level modules
            head = line.split()[0]
            folder = head if head.endswith("/") else ""
        named |= {folder + name for name in re.findall(r"\b\w+\.py\b", line)}
    actual = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert actual - named == set(), f"modules missing from the README's Layout: {sorted(actual - named)}"
    assert named - actual == set(), f"the README's Layout names modules that do not exist: {sorted(named - actual)}"
