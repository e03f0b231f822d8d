"""Where a run's files live, read by every phase (no torch import, so sweep planning stays light).

    runs/<name>/config.yaml                     the resolved run config
                STOP                            (optional) stop at the next step boundary, and why
                footprint.json                  the memory the run needed (written at its end)
                tb/                             TensorBoard
                checkpoints/step-XXXXXX/        weights or adapter, tokenizer, config.yaml, meta.json,
                                                engine/ (DeepSpeed state), eval.json, COMPLETE (last)

Training writes checkpoints (`unlearn.train.checkpoint`); evaluation, sweeps and resume only read
folders that carry the COMPLETE marker.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from unlearn.errors import UserError

COMPLETE = "COMPLETE"
EVAL_ERROR = "eval.error"
"""Beside a checkpoint: the one-line reason its last evaluation failed (removed by a success)."""
STOP = "STOP"
"""In a run folder: the run stops at its next step boundary with a final checkpoint; holds the reason
(successive halving writes it; `touch` works too)."""
TRAIN_EXIT = "train.exit"
"""In a sweep's run folder: the exit status of its training task, written when the task ends for good
(not on a requeue); successive halving counts a run that ended before a round as out of it."""


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


def git_commit() -> str:
    """The checkout's commit, recorded in meta.json and eval.json ('' outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""
