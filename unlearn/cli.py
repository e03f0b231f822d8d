"""Shared command-line plumbing for the thin training scripts in launch/."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from unlearn.errors import EXIT_DIVERGED, EXIT_USER_ERROR, Diverged, UserError


def run_args(description: str) -> argparse.ArgumentParser:
    """`--ds_config FILE [--config X.yaml ...] [--resume|--overwrite] [key.sub=value ...]`."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ds_config", required=True, help="DeepSpeed JSON (ZeRO, precision, offload)")
    parser.add_argument("--config", action="append", default=[],
                        help="run YAML (repeatable; later files win); defaults = the embedded demo")
    parser.add_argument("--resume", action="store_true",
                        help="continue runs/<run.name> from its last complete checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing runs/<run.name> first")
    parser.add_argument("--no_report", action="store_true", help="skip the before/after table at the end")
    parser.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)  # set by deepspeed
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="config overrides, e.g. optim.lr=2e-6; ds.* patches the DeepSpeed JSON")
    return parser


def guarded(fn: Callable[[], object]) -> None:
    """Run `fn`; a UserError becomes one `error:` line on stderr and exit status 2, a divergence
    stop one line and status 4 (no traceback). In a multi-rank run the launcher (deepspeed,
    torchrun, srun --kill-on-bad-exit) then ends the other ranks, so none waits in a collective."""
    try:
        fn()
    except UserError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
    except Diverged as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_DIVERGED) from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def train_main(doc: str, argv: list[str] | None, defaults: dict[str, Any] | None = None) -> None:
    """Entry point shared by launch/unlearn.py and launch/finetune.py."""
    args = run_args(doc).parse_intermixed_args(argv)

    def job() -> None:
        from unlearn.config_io import load_config

        cfg, ds_patch = load_config(args.config, args.overrides, defaults=defaults)  # config typos: < 1 s
        from unlearn.report import final_report  # torch, transformers: seconds
        from unlearn.train import train

        run_dir = train(cfg, args.ds_config, ds_patch, resume=args.resume, overwrite=args.overwrite)
        if not args.no_report:
            final_report(cfg, run_dir)

    guarded(job)
