"""Run folders: runs/<run.name>/ with the resolved config; refuses to clobber an existing run."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from unlearn import distributed
from unlearn.config import Config
from unlearn.config_io import dump_yaml
from unlearn.distributed import DistEnv
from unlearn.errors import UserError
from unlearn.runs import RESUME_AUTO


def prepare_run_dir(cfg: Config, env: DistEnv, *, resume: bool | str, overwrite: bool) -> Path:
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


def check_run_dir(cfg: Config, *, resume: bool | str, overwrite: bool) -> None:
    """The run-folder errors, found without creating the run folder (every rank may call it: no
    rank creates anything before all have passed it and met in distributed start-up)."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other; expected at most one of them")
    _check_writable(Path(cfg.run.output_dir))
    if not cfg.run.name:
        return
    path = Path(cfg.run.output_dir) / cfg.run.name
    if path.exists() and not path.is_dir():
        raise UserError(f"run folder '{path}' is a file; expected a folder (or a free run.name)")
    if resume and resume != RESUME_AUTO and not path.is_dir():
        raise UserError(f"--resume: run folder '{path}' does not exist; expected the run.name of an earlier "
                        "run (or --resume auto to start it when missing, as sweeps and requeues do)")
    if path.is_dir() and any(path.iterdir()) and not (resume or overwrite):
        raise UserError(f"run folder '{path}' already exists; pass --resume to continue it, "
                        "--overwrite to replace it, or choose another run.name")


def _prepare(cfg: Config, resume: bool | str, overwrite: bool) -> Path:
    check_run_dir(cfg, resume=resume, overwrite=overwrite)
    # Unnamed runs get a fresh name each time (second + pid), so repeating a command never collides.
    name = cfg.run.name or time.strftime("run-%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    path = Path(cfg.run.output_dir) / name
    if overwrite and path.is_dir():
        shutil.rmtree(path)
    elif resume and not path.is_dir():
        print(f"--resume auto: '{path}' does not exist yet, starting a new run", flush=True)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(dump_yaml(cfg))
    return path


def _check_writable(parent: Path) -> None:
    """Create `parent` and write a probe file in it (os.access says yes to root even where writes fail)."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise UserError(f"run.output_dir '{parent}' is not a writable folder ({exc.strerror or exc}); "
                        "expected a folder this user can create and write to") from None


FOOTPRINT = "footprint.json"


def write_footprint(run_dir: Path, env: DistEnv) -> None:
    """runs/<name>/footprint.json: the memory this run needed (rank 0's peak: reserved GPU memory on a
    GPU, the process's peak RSS on a CPU), in GiB; a sweep's `footprint` may point at it to place
    several runs per GPU (unlearn.sweep.colocate)."""
    import json
    import resource

    import torch

    if not env.is_main:
        return
    if torch.cuda.is_available():
        peak, what = torch.cuda.max_memory_reserved() / 2**30, f"reserved on {torch.cuda.get_device_name()}"
    else:
        peak, what = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS (CPU)"
    (Path(run_dir) / FOOTPRINT).write_text(json.dumps({"peak_gib": round(peak, 3), "measure": what}) + "\n")
