"""Evaluate checkpoints: harmful rate, copyright memorisation, utility, privacy, multiple choice, MUSE, TOFU.

    python launch/evaluate.py CHECKPOINT_DIR [--suite harmful,copyright,utility,privacy,mc,muse,tofu] [--force]
    python launch/evaluate.py --run RUN_DIR        # every complete checkpoint not yet evaluated + summary

Writes CHECKPOINT_DIR/eval.json and `eval/...` scalars in RUN_DIR/tb at the checkpoint's step.
A stop (SIGTERM, SIGUSR1) exits 3 with the suites that finished kept: the same command runs the rest.
Data defaults come from the checkpoint's config.yaml; the flags below override them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from unlearn.errors import guarded, stop_signals_raise  # noqa: E402
from unlearn.eval.context import options_from_flags  # noqa: E402
from unlearn.eval.job import parser  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__).parse_args(argv)

    def job() -> None:
        from unlearn.eval import job as evaluation
        from unlearn.eval.record import metrics_table

        opts = options_from_flags(args, evaluation.parse_suites(args.suite))
        with stop_signals_raise():  # SIGTERM/SIGUSR1: exit 3, the finished suites kept in eval.json
            results = evaluation.evaluate_run(args.run, opts) if args.run else \
                [evaluation.evaluate_checkpoint(args.checkpoint, opts)]
        for result in results:
            print("\n" + metrics_table(result), flush=True)

    guarded(job)


if __name__ == "__main__":
    main()
