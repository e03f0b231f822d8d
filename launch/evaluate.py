"""Evaluate checkpoints: harmful rate, copyright memorisation, utility, privacy.

    python launch/evaluate.py CHECKPOINT_DIR [--suite harmful,copyright,utility,privacy] [--force]
    python launch/evaluate.py --run RUN_DIR        # every complete checkpoint not yet evaluated + summary

Writes CHECKPOINT_DIR/eval.json and `eval/...` scalars in RUN_DIR/tb at the checkpoint's step.
Data defaults come from the checkpoint's config.yaml; the flags below override them.
"""

import argparse
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from unlearn.cli import guarded  # noqa: E402
from unlearn.eval_context import EvalOptions  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("checkpoint", nargs="?", help="a checkpoint folder (runs/<name>/checkpoints/step-XXXXXX)")
    where.add_argument("--run", help="a run folder: evaluate all its complete checkpoints, then summarise")
    p.add_argument("--suite", default="", help="comma list of harmful,copyright,utility,privacy (default: "
                   "those the run's data supports)")
    for f in fields(EvalOptions):  # one flag per option, help = the field's docstring
        if f.name in ("suites",):
            continue
        doc = _field_doc(f.name)
        if f.type in ("bool", bool):
            p.add_argument(f"--{f.name}", action="store_true", help=doc)
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(f"--{f.name}", type=kind, default=f.default, help=f"{doc} (default: {f.default!r})")
    return p


def _field_doc(name: str) -> str:
    import ast
    import inspect

    from unlearn import eval_context

    tree = ast.parse(inspect.getsource(eval_context.EvalOptions))
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and node.target.id == name and isinstance(nxt, ast.Expr):
            return nxt.value.value.replace("%", "%%")  # argparse formats help with %
    return ""


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)

    def job() -> None:
        from unlearn import evaluate

        values = {f.name: getattr(args, f.name) for f in fields(EvalOptions) if f.name != "suites"}
        opts = EvalOptions(suites=evaluate.parse_suites(args.suite), **values)
        if args.run:
            evaluate.evaluate_run(args.run, opts)
        else:
            evaluate.evaluate_checkpoint(args.checkpoint, opts)

    guarded(job)


if __name__ == "__main__":
    main()
