"""The training job behind launch/unlearn.py and launch/finetune.py: arguments -> config -> train
-> the before/after table (`unlearn.eval.before_after`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from unlearn.errors import UserError, guarded
from unlearn.runs import RESUME_AUTO, RESUME_LAST


def _resume_words(argv: list[str]) -> list[str]:
    """`--resume auto` and `--resume=auto` -> --resume-auto (a bare --resume takes no value, so an
    override after it is never read as one)."""
    out: list[str] = []
    for word in argv:
        if word == "auto" and out and out[-1] == "--resume":
            out[-1] = "--resume-auto"
        else:
            out.append("--resume-auto" if word == "--resume=auto" else word)
    return out


def run_args(description: str) -> argparse.ArgumentParser:
    """`--ds_config FILE [--config X.yaml ...] [--resume|--overwrite] [key.sub=value ...]`."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ds_config", required=True, help="DeepSpeed JSON (ZeRO, precision, offload)")
    parser.add_argument("--config", action="append", default=[],
                        help="run YAML (repeatable; later files win); defaults = the embedded demo")
    parser.add_argument("--resume", action="store_const", const=RESUME_LAST, default="",
                        help="continue runs/<run.name> from its last complete checkpoint (the run must exist); "
                             "`--resume auto` starts it when it does not (what sweeps and requeues use)")
    parser.add_argument("--resume-auto", dest="resume", action="store_const", const=RESUME_AUTO,
                        help=argparse.SUPPRESS)  # `--resume auto` / `--resume=auto`, see _resume_words
    parser.add_argument("--overwrite", action="store_true", help="delete an existing runs/<run.name> first")
    parser.add_argument("--no_report", action="store_true", help="skip the before/after table at the end")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by deepspeed
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. optim.lr=2e-6; ds.* patches the DeepSpeed JSON")
    return parser


def train_main(doc: str, argv: list[str] | None, defaults: dict[str, Any] | None = None) -> None:
    """Entry point shared by launch/unlearn.py and launch/finetune.py."""
    args = run_args(doc).parse_intermixed_args(_resume_words(sys.argv[1:] if argv is None else argv))

    def job() -> None:
        from unlearn.config_io import load_config

        try:
            cfg, ds_patch = load_config(args.config, args.overrides, defaults=defaults)  # config typos: < 1 s
        except UserError as exc:
            exc.every_rank = True  # every rank reads the same files: one error line, from rank 0
            raise
        from unlearn.eval.before_after import final_report  # torch, transformers: seconds
        from unlearn.train.loop import train

        run_dir = train(cfg, args.ds_config, ds_patch, resume=args.resume, overwrite=args.overwrite)
        if not args.no_report:
            final_report(cfg, run_dir)

    guarded(job)
