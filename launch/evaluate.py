"""Evaluate checkpoints: harmful rate, copyright memorisation, utility, privacy.

    python launch/evaluate.py CHECKPOINT_DIR [--suite harmful,copyright,utility,privacy] [--force]
    python launch/evaluate.py --run RUN_DIR        # every complete checkpoint not yet evaluated + summary

Writes CHECKPOINT_DIR/eval.json and `eval/...` scalars in RUN_DIR/tb at the checkpoint's step.
Data defaults come from the checkpoint's config.yaml; the flags below override them.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from unlearn.errors import guarded  # noqa: E402
from unlearn.eval.context import add_option_flags, options_from_flags  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("checkpoint", nargs="?", help="a checkpoint folder (runs/<name>/checkpoints/step-XXXXXX)")
    where.add_argument("--run", help="a run folder: evaluate all its complete checkpoints, then summarise")
    p.add_argument("--suite", default="", help="comma list of harmful,copyright,utility,privacy (default: "
                   "those the run's data supports)")
    add_option_flags(p)  # one flag per EvalOptions field, help = its docstring
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)

    def job() -> None:
        from unlearn.eval import job as evaluation

        opts = options_from_flags(args, evaluation.parse_suites(args.suite))
        if args.run:
            evaluation.evaluate_run(args.run, opts)
        else:
            evaluation.evaluate_checkpoint(args.checkpoint, opts)

    guarded(job)


if __name__ == "__main__":
    main()
