"""Where a run's files live, read by every phase (no torch import, so sweep planning stays light).

    runs/<name>/config.yaml                     the resolved run config
                STOP                            (optional) stop at the next step boundary, and why
                footprint.json                  the memory the run needed (written at its end)
                tb/                             TensorBoard
                checkpoints/step-XXXXXX/        weights or adapter, tokenizer, config.yaml, meta.json,
                                                engine/ (DeepSpeed state), COMPLETE (last), then
                                                eval.json (evaluated() once every suite ran), eval.error

Training writes checkpoints (`unlearn.train.checkpoint`); evaluation, sweeps and resume only read
folders that carry the COMPLETE marker. An evaluation holds a shared lock on that marker while it
reads (`reading`), and train.keep_last_n's pruning removes only checkpoints it can lock exclusively
(`removable`), so a checkpoint is never deleted under its evaluation.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
from pathlib import Path
from typing import Iterator

from unlearn.errors import UserError

RESUME_LAST, RESUME_AUTO = "last", "auto"
"""`--resume` (the run must exist) and `--resume auto` (start it when it does not)."""

COMPLETE = "COMPLETE"
EVAL_FILE = "eval.json"
"""Beside a checkpoint: its evaluation, written after every suite; until every suite asked for has
finished it carries an `incomplete` entry (which suites have not run, and the one that failed)."""
EVAL_ERROR = "eval.error"
"""Beside a checkpoint: the one-line reason its last evaluation failed (removed by a success)."""
STOP = "STOP"
"""In a run folder: the run stops at its next step boundary with a final checkpoint; holds the reason
(successive halving writes it; `touch` works too)."""
TRAIN_EXIT = "train.exit"
"""In a sweep's run folder: the exit status of its training task, written when the task ends for good
(not on a requeue); successive halving counts a run that ended before a round as out of it."""


def evaluated(ckpt: Path) -> bool:
    """The checkpoint's eval.json holds every suite its evaluation was asked for (no `incomplete` entry):
    what a sweep's status, report, successive halving and `--best` count as evaluated."""
    path = Path(ckpt) / EVAL_FILE
    try:
        return path.is_file() and "incomplete" not in json.loads(path.read_text())
    except (OSError, ValueError):  # half a file written by hand, or removed meanwhile
        return False


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / COMPLETE).is_file())


def require_complete(path: Path) -> None:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint '{path}' not found; expected a folder runs/<name>/checkpoints/step-XXXXXX")
    if not (path / COMPLETE).is_file():
        raise UserError(f"checkpoint '{path}' has no {COMPLETE} marker (unfinished or crashed save); "
                        "expected a completely written checkpoint")


class Removed(UserError):
    """The checkpoint went (train.keep_last_n, or by hand) before an evaluation could take its lock:
    nothing of it was read, nothing written."""


def removed_message(path: Path) -> str:
    return (f"checkpoint '{path}' was removed while being evaluated (by train.keep_last_n, or by hand); nothing "
            "was written; expected it to stay until its evaluation ends (train.keep_last_n=0 keeps all)")


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Hold a shared lock on the checkpoint's COMPLETE marker for the block (released when the process
    ends, however it ends). Raises UserError if the checkpoint was removed before the lock was taken.
    Where the filesystem has no flock (some Lustre mounts) the block runs unlocked."""
    marker = Path(path) / COMPLETE
    try:
        fh = open(marker, "rb")
    except FileNotFoundError:
        raise Removed(removed_message(path)) from None
    with fh:
        _lock(fh, fcntl.LOCK_SH)  # waits while a pruner holds it (it is removing the folder)
        if not marker.is_file():  # the pruner won: the marker we opened was unlinked
            raise Removed(removed_message(path))
        yield


@contextlib.contextmanager
def removable(path: Path) -> Iterator[bool]:
    """True inside the block when no evaluation reads the checkpoint; it then holds an exclusive lock
    on COMPLETE, so an evaluation that starts meanwhile waits, then finds the checkpoint gone."""
    with open(Path(path) / COMPLETE, "rb+") as fh:
        yield _lock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _lock(fh, how: int) -> bool:
    """flock(2); False when it would block (LOCK_NB), True when taken or when the filesystem has none."""
    try:
        fcntl.flock(fh.fileno(), how)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK/EINVAL/ENOTSUP: no flock on this filesystem
        pass
    return True


def git_commit() -> str:
    """The checkout's commit, recorded in meta.json and eval.json ('' outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""
