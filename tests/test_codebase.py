"""The shape of the package: dependencies point one way, modules and functions stay small.

The layers, lowest first; a module may import from its own layer and the layers below it,
never from a layer above, and the imports inside one layer form no cycle. Every import
counts: at module top, inside a function, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autocompress"

LAYERS = (
    ("autocompress.errors", "autocompress.utils", "autocompress.devices", "autocompress.version"),
    ("autocompress.metrics",),
    ("autocompress.spec",),
    ("autocompress.zoo",),
    ("autocompress.compress",),
    ("autocompress.training",),
    ("autocompress.deploy",),
    ("autocompress.trial",),
    ("autocompress.search",),
    ("autocompress.report",),
    ("autocompress.bundle",),
    ("autocompress.cli", "autocompress.__main__"),
)
# The public facade (``from autocompress import run_study``) sits above every layer.
FACADE = "autocompress"

MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 6


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module of the package that ``path`` imports, wherever the import stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    known = set(files)
    graph = {name: imports_of(path, name, known) for name, path in files.items()}
    for name in graph:  # "from autocompress.compress import quantization" names both; keep the module
        graph[name] = {t for t in graph[name] if not any(o.startswith(t + ".") for o in graph[name])}
    return graph


def layer_of(name: str, layers=LAYERS) -> int | None:
    for i, prefixes in enumerate(layers):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    return None


def violations(graph: dict[str, set[str]], layers=LAYERS, facade: str = FACADE) -> list[str]:
    """Imports that point up the layers, modules in no layer, and cycles inside a layer."""
    out = []
    for name, targets in sorted(graph.items()):
        if name == facade:
            continue
        mine = layer_of(name, layers)
        if mine is None:
            out.append(f"{name} belongs to no layer")
            continue
        for target in sorted(targets):
            theirs = layer_of(target, layers)
            if target == facade or theirs is None or theirs > mine:
                out.append(f"{name} imports {target}, a higher layer")
    out += [f"import cycle among: {', '.join(c)}" for c in cycles(graph, facade)]
    return out


def cycles(graph: dict[str, set[str]], facade: str = FACADE) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), the facade left out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w == facade or w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v != facade and v not in index:
            visit(v)
    return found


# -- the package -------------------------------------------------------------------------------
def test_dependencies_point_down_the_layers():
    assert violations(import_graph(PACKAGE)) == []


def test_modules_are_small():
    too_long = {module_name(p, PACKAGE): n for p in PACKAGE.rglob("*.py")
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert too_long == {}


def functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_functions_are_short_and_take_few_parameters():
    long, wide = {}, {}
    for path in PACKAGE.rglob("*.py"):
        for fn in functions(path):
            where = f"{module_name(path, PACKAGE)}.{fn.name}:{fn.lineno}"
            body_start = fn.body[0].lineno
            if isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) and len(fn.body) > 1:
                body_start = fn.body[1].lineno  # the docstring does not count
            if fn.end_lineno - body_start + 1 > MAX_FUNCTION_LINES:
                long[where] = fn.end_lineno - body_start + 1
            a = fn.args
            params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
            if len(params) > MAX_PARAMETERS:
                wide[where] = len(params)
    assert long == {} and wide == {}


# -- the checker itself, on packages made for it ---------------------------------------------------
def _write_package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "autocompress"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return pkg


def test_checker_finds_an_upward_import_even_inside_a_function_or_type_checking(tmp_path):
    pkg = _write_package(tmp_path, {
        "__init__.py": "", "errors.py": "", "spec/__init__.py": "",
        "spec/policy.py": "def f():\n    from autocompress.search import study\n",
        "search/__init__.py": "", "search/study.py": "from autocompress.spec import policy\n",
        "metrics/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                               "    from autocompress.trial.run import x\n",
        "trial/__init__.py": "", "trial/run.py": "x = 1\n",
    })
    found = violations(import_graph(pkg))
    assert "autocompress.spec.policy imports autocompress.search.study, a higher layer" in found
    assert "autocompress.metrics imports autocompress.trial.run, a higher layer" in found


def test_checker_finds_a_cycle_inside_a_layer(tmp_path):
    pkg = _write_package(tmp_path, {
        "__init__.py": "", "search/__init__.py": "",
        "search/a.py": "from autocompress.search import b\n",
        "search/b.py": "from .c import thing\n",
        "search/c.py": "def f():\n    import autocompress.search.a\n",
    })
    assert violations(import_graph(pkg)) == [
        "import cycle among: autocompress.search.a, autocompress.search.b, autocompress.search.c"]


def test_checker_accepts_imports_down_the_layers(tmp_path):
    pkg = _write_package(tmp_path, {
        "__init__.py": "from autocompress.search.study import run\n", "errors.py": "",
        "search/__init__.py": "", "search/study.py": "from autocompress.errors import E\nfrom . import budget\n",
        "search/budget.py": "import autocompress.errors\n",
    })
    assert violations(import_graph(pkg)) == []


@pytest.mark.parametrize("lines, limit_hit", [(MAX_FUNCTION_LINES, False), (MAX_FUNCTION_LINES + 1, True)])
def test_function_length_counts_body_lines_without_docstring(tmp_path, lines, limit_hit):
    body = "\n".join(f"    x{i} = {i}" for i in range(lines))
    path = tmp_path / "m.py"
    path.write_text(f'def f():\n    """Doc."""\n{body}\n')
    fn = next(functions(path))
    assert (fn.end_lineno - fn.body[1].lineno + 1 > MAX_FUNCTION_LINES) is limit_hit
