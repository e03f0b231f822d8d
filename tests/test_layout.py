"""The package layout as the README describes it: foundations <- phases <- launch/, no cycles.

Read from the source (ast), so a lazy import inside a function counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "unlearn"
PHASES = ("train", "eval", "sweep", "bench")
ENTRY = {"train": {"main", "loop", "engine", "checkpoint"}, "eval": {"job", "before_after"}, "sweep": {"submit"},
         "bench": {"runner"}}
"""What one phase may import of another: its entry modules (the bench builds our step as train does, and
saves a checkpoint as train does to measure its checksums)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every `unlearn...` module the file imports, at any depth (`from unlearn.x import y` -> unlearn.x.y
    when y is a module, else unlearn.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] in ("unlearn", "launch", "submitit")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in ("launch", "submitit"):
                out.add(node.module)
            if node.module.split(".")[0] != "unlearn":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (ROOT / Path(*sub.split("."))).is_dir()
                out.add(sub if is_module else node.module)
    return out


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _phase(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in PHASES else None


def test_foundations_import_no_phase():
    bad = [(m, i) for m, deps in _graph().items() if _phase(m) is None and m.count(".") <= 1
           for i in deps if _phase(i) or i in (f"unlearn.{p}" for p in PHASES)]
    assert not bad, bad


def test_a_phase_uses_another_only_through_its_entry_modules():
    bad = []
    for module, deps in _graph().items():
        own = _phase(module)
        for dep in deps:
            other = _phase(dep)
            if own and other and other != own and dep.split(".")[2] not in ENTRY[other]:
                bad.append((module, dep))
    assert not bad, bad


def test_no_import_cycles():
    graph = {m: {d for d in deps if d in _graph_keys()} for m, deps in _graph().items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def _graph_keys() -> set[str]:
    return {_module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}


def test_the_library_never_imports_launch_and_submitit_only_inside_jobs():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names} | \
            {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
        assert not {n for n in names if n.split(".")[0] in ("launch", "submitit")}, path
        assert not any(i.startswith("launch") for i in _imports(path)), path


def test_launch_scripts_only_parse_arguments_and_call_the_library():
    for path in sorted((ROOT / "launch").glob("*.py")):
        tree = ast.parse(path.read_text())
        lines = len(path.read_text().splitlines())
        assert lines <= 65, (path.name, lines)
        assert not [n for n in tree.body if isinstance(n, ast.ClassDef)], path.name
        defs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert defs <= {"main", "parser", "parse"}, (path.name, defs)
