"""Run folders: runs/<run.name>/ with the resolved config; refuses to clobber an existing run."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from unlearn import distributed
from unlearn.config import Config
from unlearn.config_io import dump_yaml
from unlearn.distributed import DistEnv
from unlearn.errors import UserError


def prepare_run_dir(cfg: Config, env: DistEnv, *, resume: bool, overwrite: bool) -> Path:
    """Create (rank 0) and return the run folder; every rank gets the same path."""
    error = ""
    path = None
    if env.is_main:
        try:
            path = _prepare(cfg, resume, overwrite)
        except UserError as exc:
            error = str(exc)
    path, error = distributed.broadcast_object((path, error), env)
    if error:
        raise UserError(error)
    return Path(path)


def _prepare(cfg: Config, resume: bool, overwrite: bool) -> Path:
    parent = Path(cfg.run.output_dir)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"run.output_dir '{parent}' cannot be created ({exc.strerror}); "
                        "expected a writable folder") from None
    if not os.access(parent, os.W_OK):
        raise UserError(f"run.output_dir '{parent}' is not writable; expected a writable folder")
    name = cfg.run.name or time.strftime("run-%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    path = parent / name
    if path.exists() and any(path.iterdir()):
        if overwrite:
            shutil.rmtree(path)
        elif not resume:
            raise UserError(f"run folder '{path}' already exists; pass --resume to continue it, "
                            "--overwrite to replace it, or choose another run.name")
    elif resume and cfg.run.name:
        print(f"--resume: '{path}' does not exist yet, starting a new run", flush=True)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(dump_yaml(cfg))
    return path
