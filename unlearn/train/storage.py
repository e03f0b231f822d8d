"""Disk room for checkpoints. A save is refused before it writes anything when the disk has less
free space than the run's last checkpoint takes; a save that fills the disk half-way (the first one,
or another program filling the disk meanwhile) removes its partial folder. Either way one line names
the folder and the size a checkpoint needs (NoSpace, exit status 5); earlier checkpoints stay intact.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from unlearn import runs
from unlearn.errors import NoSpace

_FULL = 1 << 20
"""Free bytes below which a failed write counts as a full disk (torch's zip writer loses the errno)."""
_WHAT_NOW = ("expected free space for one more checkpoint (free some, set train.keep_last_n, or point "
             "run.output_dir at a larger disk)")


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in Path(folder).rglob("*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except FileNotFoundError:  # an evaluation's temporary eval.json, renamed meanwhile
            pass
    return total


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def check_room(run_dir: Path, step: int) -> None:
    """Raise NoSpace when the checkpoints' disk has less free space than the newest checkpoint takes."""
    done = runs.complete_checkpoints(run_dir)
    if not done:
        return
    root, need = done[-1].parent, folder_bytes(done[-1])
    free = shutil.disk_usage(root).free
    if free < need:
        raise NoSpace(f"no space left on {root} for step-{step:06d}: a checkpoint of this run needs "
                      f"{_mb(need)} (as {done[-1].name}), {_mb(free)} free; {_WHAT_NOW}")


def full_disk(exc: BaseException, partial: Path, run_dir: Path, step: int) -> NoSpace | None:
    """The NoSpace to raise for a save of `step` that failed with `exc` (None: not a full disk). Call
    it before removing the `partial` folder: what that holds is the lower bound of a first save."""
    root = partial.parent
    if not (_says_full(exc) or (root.is_dir() and shutil.disk_usage(root).free < _FULL)):
        return None
    done, written = runs.complete_checkpoints(run_dir), folder_bytes(partial)
    last = folder_bytes(done[-1]) if done else 0
    need = (f"needs {_mb(last)} (as {done[-1].name})" if last > written else
            f"needs more than the {_mb(written)} written before the disk filled")
    return NoSpace(f"no space left on {root} while saving step-{step:06d}: a checkpoint of this run {need}; "
                   f"the partial save was removed; {_WHAT_NOW}")


def _says_full(exc: BaseException | None) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception chain (OSError's errno, or safetensors' message)."""
    while exc is not None:
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or \
                any(s in str(exc) for s in ("No space left on device", "Disk quota exceeded")):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
