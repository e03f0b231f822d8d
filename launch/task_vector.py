"""Task Vector: fine-tune the model on its forget set, then subtract alpha times the difference.

    deepspeed [--num_gpus N] launch/task_vector.py --ds_config ds_configs/zero2.json \
        [--config configs/X.yaml] --config configs/methods/task_vector.yaml [--resume | --overwrite] [key.sub=value ...]

The run config's model, forget set, optimizer and steps make the fine-tune (run <run.name>-finetune, NLL on
data.forget; method.forget_loss and the retain set are not used); the result is the run <run.name>, one
checkpoint theta - method.task_vector_alpha (theta_ft - theta), then the before/after table (unlearn/task_vector.py).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from unlearn.errors import guarded  # noqa: E402
from unlearn.train.main import _resume_words, run_args  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = run_args(__doc__).parse_intermixed_args(_resume_words(sys.argv[1:] if argv is None else argv))

    def job() -> None:
        from unlearn.config_io import load_config

        cfg, ds_patch = load_config(args.config, args.overrides)
        from unlearn.eval.before_after import final_report
        from unlearn.train import task_vector

        out = task_vector.run(cfg, args.ds_config, ds_patch, resume=args.resume, overwrite=args.overwrite)
        if not args.no_report:
            final_report(cfg, out)

    guarded(job)


if __name__ == "__main__":
    main()
