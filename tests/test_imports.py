"""The package imports in pipeline order: a stage never imports a later one, and every import is visible.

Read from the source with `ast` (nothing is imported), so an import inside a function counts as much as
one at the top of the module. The order, earliest first:

    config, logs, metrics           import nothing of the project
    storage, tables, spark          the lake and the cluster, on top of config
    tracking                        MLflow runs and the registry (no model code)
    data < model < shipping < train < evaluate < score     the stages, each a package (shipping: the
                                    model and fitted state sent to the executors, for evaluate and score)
    pipeline, benchmark, maintain, sql          the jobs that string stages together
    cli                             the command line over all of them

A module may import any module of an earlier layer and the modules of its own package (or itself); two
modules of one layer that are not one package do not import each other. Project imports sit at the top
of a module (inside `if TYPE_CHECKING:` too), never in a function, with one exception: the command line
(`cli`) imports each stage inside the function that runs it, marked `# deferred: <reason>`, so that
`--help` and a usage error answer without loading Spark, torch or MLflow (tests/test_cli.py). Imports in
functions are checked against the layers like the others, so the graph above is still the whole graph.
A function may import a third-party or standard module only with a comment on the import saying why it
is deferred, `# deferred: <reason>` (an optional heavy dependency such as Horovod or Petastorm, a module
that must not load where the function's module is imported, ...).
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "nextplay"
ROOT = Path(__file__).resolve().parents[1] / "lib" / PACKAGE

LAYERS: tuple[tuple[str, ...], ...] = (
    ("config", "logs", "metrics", "progress", "run_metrics", "runtime"),
    ("storage", "tables", "spark"),
    ("tracking",),
    ("data",),
    ("model",),
    ("serving",),
    ("model_code",),
    ("shipping",),
    ("train",),
    ("evaluate",),
    ("score",),
    ("pipeline", "benchmark", "maintain", "sql"),
    ("cli",),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
DEFERRED = re.compile(r"#\s*deferred:\s*\S")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    line: int
    target: str  # the imported module, dotted (for `from a import b`, a.b when that is a module)
    in_function: bool
    deferred: bool  # the statement carries a `# deferred: <reason>` comment


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    """Whether `dotted` (inside the package) names a module or package file."""
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path) -> list[Import]:
    """Every import statement of one file, wherever it stands."""
    module = module_name(path)
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                text = "\n".join(lines[child.lineno - 1:child.end_lineno])
                deferred = bool(DEFERRED.search(text))
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                else:
                    base = _absolute(child, module, path.name == "__init__.py")
                    targets = [f"{base}.{a.name}" if base.startswith(PACKAGE) and is_module(f"{base}.{a.name}")
                               else base for a in child.names]
                found.extend(Import(module, child.lineno, t, in_function, deferred) for t in dict.fromkeys(targets))
            visit(child, inner)

    visit(ast.parse(source, filename=str(path)), False)
    return found


def all_imports() -> list[Import]:
    return [i for path in sorted(ROOT.rglob("*.py")) for i in imports_of(path)]


def unit(dotted: str) -> str:
    """The layer unit of a project module: its top-level module or stage package under nextplay."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def is_project(dotted: str) -> bool:
    return dotted == PACKAGE or dotted.startswith(PACKAGE + ".")


def order_violations(imports: list[Import]) -> list[str]:
    out = []
    for i in imports:
        if not is_project(i.target) or unit(i.target) == "" or unit(i.module) == unit(i.target):
            continue
        src, dst = unit(i.module), unit(i.target)
        if src not in RANK or dst not in RANK:
            out.append(f"{i.module}:{i.line} imports {i.target}: add '{src if src not in RANK else dst}' to LAYERS")
        elif RANK[dst] >= RANK[src]:
            out.append(f"{i.module}:{i.line} imports {i.target}: {dst} is not below {src} in pipeline order")
    return out


def placement_violations(imports: list[Import]) -> list[str]:
    out = []
    for i in imports:
        if not i.in_function:
            continue
        if is_project(i.target) and not (i.module == f"{PACKAGE}.cli" and i.deferred):
            out.append(f"{i.module}:{i.line} imports {i.target} inside a function: project imports go at the top")
        elif not i.deferred:
            out.append(f"{i.module}:{i.line} imports {i.target} inside a function without '# deferred: <reason>'")
    return out


def cycles(imports: list[Import]) -> list[str]:
    """Import cycles between project modules (within a package too), as 'a -> b -> a'."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        if is_project(i.target) and i.target != i.module:
            graph.setdefault(i.module, set()).add(i.target)
    found: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    return found


def test_every_module_has_a_layer():
    units = {unit(module_name(p)) for p in ROOT.rglob("*.py")} - {""}
    assert sorted(units - set(RANK)) == [], "a new top-level module or package needs its place in LAYERS"


def test_no_import_reaches_a_later_stage():
    violations = order_violations(all_imports())
    assert violations == [], f"{len(violations)} imports against pipeline order:\n" + "\n".join(violations)


def test_imports_sit_at_the_top_unless_deferred_for_a_reason():
    violations = placement_violations(all_imports())
    assert violations == [], f"{len(violations)} imports inside functions:\n" + "\n".join(violations)


def test_no_import_cycles():
    found = cycles(all_imports())
    assert found == [], "import cycles:\n" + "\n".join(found)


# -- the checker itself, on small made-up packages --------------------------------------------------

@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    root = tmp_path / PACKAGE
    for rel in ("__init__.py", "config.py", "tracking.py", "data/__init__.py", "data/ingest.py",
                "train/__init__.py", "train/launch.py", "evaluate/__init__.py", "evaluate/report.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)
    return root


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.write_text(text)
    return path


def test_checker_flags_a_backward_edge_even_inside_a_function(fake_root):
    path = _write(fake_root, "train/launch.py",
                  "from nextplay.config import Config\n"
                  "def f():\n    from nextplay.evaluate import report\n")
    found = imports_of(path)
    assert [(i.target, i.in_function) for i in found] == [("nextplay.config", False),
                                                          ("nextplay.evaluate.report", True)]
    assert len(order_violations(found)) == 1 and "evaluate is not below train" in order_violations(found)[0]
    assert len(placement_violations(found)) == 1


def test_checker_resolves_relative_and_package_imports(fake_root):
    path = _write(fake_root, "tracking.py",
                  "from . import data\nfrom .train import launch\nfrom nextplay import config\n")
    assert [i.target for i in imports_of(path)] == ["nextplay.data", "nextplay.train.launch", "nextplay.config"]
    assert len(order_violations(imports_of(path))) == 2  # tracking sits below both stages


def test_checker_accepts_deferred_third_party_imports_with_a_reason_only(fake_root):
    path = _write(fake_root, "data/ingest.py",
                  "import numpy\n"
                  "def f():\n    import horovod  # deferred: optional, only the horovod launcher needs it\n"
                  "def g():\n    import petastorm  # deferred:\n"
                  "def h():\n    import json\n")
    assert [v.split(" ")[2] for v in placement_violations(imports_of(path))] == ["petastorm", "json"]


def test_checker_finds_cycles_within_a_package(fake_root):
    _write(fake_root, "data/__init__.py", "from nextplay.data import ingest\n")
    _write(fake_root, "data/ingest.py", "import nextplay.data\n")
    found = [i for p in (fake_root / "data").glob("*.py") for i in imports_of(p)]
    assert cycles(found) == ["nextplay.data -> nextplay.data.ingest -> nextplay.data"]
