"""Error messages name only what exists: every example path, `make` target, command-line flag and config
key that a message (a raise, an *Error(...) call, or any string saying what is "expected") points a user
to is checked against the tree, the Makefile, the launchers' parsers and the config, so that no message
sends a user to a file that is not there (`expected a YAML file such as configs/demo.yaml` did)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import ROOT

TOP = ("configs", "ds_configs", "launch", "slurm", "unlearn", "tests")
PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(TOP) + r")/[\w./-]*\w)")
MAKE = re.compile(r"`make ([\w-]+)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")
KEY = re.compile(r"(?<![\w.])((?:model|data|method|optim|train|run)\.[a-z_]+)\b(?!\.py|\.json|\.yaml|\.exit)")


def _docstrings(tree: ast.AST) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def messages() -> list[tuple[str, int, str]]:
    """(file, line, text) of every string in an error message of unlearn/ and launch/, and every line of
    slurm/*.sh and the Makefile that speaks of an error or of what is expected."""
    out = []
    for path in sorted([*(ROOT / "unlearn").rglob("*.py"), *(ROOT / "launch").glob("*.py")]):
        tree = ast.parse(path.read_text())
        skip, seen = _docstrings(tree), set()
        inside = [n.exc for n in ast.walk(tree) if isinstance(n, ast.Raise) and n.exc is not None]
        inside += [n for n in ast.walk(tree) if isinstance(n, ast.Call) and
                   getattr(n.func, "id", getattr(n.func, "attr", "")).endswith(("Error", "error"))]
        for node in inside:
            seen |= {id(c) for c in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip and \
                    (id(node) in seen or "expected" in node.value):
                out.append((str(path.relative_to(ROOT)), node.lineno, node.value))
    for path in sorted([*(ROOT / "slurm").glob("*.sh"), ROOT / "Makefile"]):  # what the scripts print
        out += [(str(path.relative_to(ROOT)), n, line) for n, line in enumerate(path.read_text().splitlines(), 1)
                if "error" in line or "expected" in line]
    return out


def _flags() -> set[str]:
    """Every flag a launcher accepts: ours (add_argument, evaluate.py's option fields) and deepspeed's."""
    import dataclasses

    import deepspeed.launcher.runner as ds_runner

    from unlearn.eval.context import EvalOptions

    sources = [p.read_text() for p in [*(ROOT / "unlearn").rglob("*.py"), *(ROOT / "launch").glob("*.py")]]
    sources.append(Path(ds_runner.__file__).read_text())
    found = {m for text in sources for m in re.findall(r"add_argument\(\s*[\"'](--[\w-]+)", text)}
    found |= {m for text in sources for m in re.findall(r"== \[\"(--[\w-]+)\"\]", text)}  # read by hand
    return found | {f"--{f.name}" for f in dataclasses.fields(EvalOptions)}


def test_error_messages_name_paths_targets_flags_and_keys_that_exist():
    import dataclasses

    from unlearn.config import Config
    from unlearn.sweep.profile import Resources

    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    keys = {f"{s.name}.{f.name}" for s in dataclasses.fields(Config) for f in dataclasses.fields(s.default_factory)}
    keys |= {f"train.{f.name}" for f in dataclasses.fields(Resources)}  # a cluster profile's train: section
    flags = _flags()
    found = messages()
    assert len(found) > 300  # the scan reads the messages (a broken scan finds none and passes nothing)
    wrong = []
    for where, line, text in found:
        wrong += [(where, line, p) for p in PATH.findall(text) if not any(c in p for c in "<>*{}")
                  and not (ROOT / p).exists()]
        wrong += [(where, line, f"make {t}") for t in MAKE.findall(text) if t not in targets]
        if where.endswith(".py"):  # the scripts also call other programs, with flags of their own
            wrong += [(where, line, f) for f in FLAG.findall(text) if f not in flags]
            wrong += [(where, line, k) for k in KEY.findall(text) if k not in keys]
    assert not wrong, wrong
