"""How a sweep's training task ended, and what comes next. Both routes decide here: slurm/train-task.sh
(`python -m unlearn.sweep.outcome`, once srun has returned) and the submitit TrainJob.

    done     every rank exited 0: the run is over (successive halving may have stopped it early)
    requeue  a rank exited 3 (EXIT_REQUEUE: it saved after a stop), or a stop signal reached the task
             before the ranks could save: requeue, not counted as a retry (preemptions are the
             scheduler's business); the run resumes from its newest complete checkpoint
    retry    any other failure (a rank killed, e.g. by the OOM killer; a traceback) with retries left:
             requeue, counted in runs/NAME/train.retries (a lost node SLURM requeues by itself)
    failed   a user error (exit 2) or a divergence stop (exit 4), which the same settings would repeat,
             or a failure with no retries left

What the files say (read by `launch/sweep.py --status` and the report beside the scheduler's state):
runs/NAME/train.exit holds the task's exit status once it ended for good, runs/NAME/train.retries one
line per retry (`retry K/MAX: REASON (job ID)`).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Callable

from unlearn.errors import EXIT_DIVERGED, EXIT_REQUEUE, EXIT_USER_ERROR, UserError
from unlearn.runs import TRAIN_EXIT

RETRIES = "train.retries"
FINAL = {EXIT_USER_ERROR: "user error", EXIT_DIVERGED: "diverged"}
"""Exit statuses never retried: the same settings would fail the same way."""


def reason(rc: int) -> str:
    """A task's or rank's exit status in words: `killed by SIGKILL (exit 137)`, `diverged (exit 4)`."""
    if rc in FINAL:
        return f"{FINAL[rc]} (exit {rc})"
    if rc < 0 or rc > 128:  # Popen: -N; shells and srun: 128 + N
        try:
            return f"killed by {signal.Signals(-rc if rc < 0 else rc - 128).name} (exit {rc})"
        except ValueError:
            pass
    return f"exit {rc}"


def retries(run_dir: Path) -> list[str]:
    """The retry lines of a run, oldest first."""
    path = Path(run_dir) / RETRIES
    return path.read_text().splitlines() if path.is_file() else []


def decide(exits: list[int], stopped: bool, used: int, max_retries: int) -> str:
    """done | requeue | retry | failed, from the exit statuses of the ranks (and of srun: a rank killed
    with its wrapper leaves none), whether a stop signal reached the task, and the retries used."""
    if EXIT_REQUEUE in exits:
        return "requeue"
    if not any(exits):
        return "done"
    if any(rc in FINAL for rc in exits):
        return "failed"
    if stopped:
        return "requeue"
    return "retry" if used < max_retries else "failed"


def conclude(run_dir: Path, exits: list[int], stopped: bool, max_retries: int, job: str,
             requeue: Callable[[], bool]) -> tuple[str, int]:
    """Decide; on requeue/retry call `requeue()` (False: nobody can, e.g. no scheduler); write what the
    files must say (a retry line, or train.exit once the task ended for good); return (requeued | done
    | failed, the task's exit status). A retry is counted once per job incarnation (`job` names it),
    however many of its ranks report the failure."""
    run_dir = Path(run_dir)
    lines = retries(run_dir)
    ours = [line for line in lines if line.endswith(f"(job {job})")]  # another rank of this try wrote it
    what = decide(exits, stopped, len(lines) - len(ours), max_retries)
    rc = next((r for r in exits if r in FINAL), next((r for r in exits if r), 0))
    run_dir.mkdir(parents=True, exist_ok=True)
    if what in ("requeue", "retry") and requeue():
        if what == "retry" and not ours:
            with (run_dir / RETRIES).open("a") as f:
                f.write(f"retry {len(lines) + 1}/{max_retries}: {reason(rc)} (job {job})\n")
        why = (f"retry after {reason(rc)}" if what == "retry" else "the run saved after a stop"
               if EXIT_REQUEUE in exits else f"a stop came before the run could save ({reason(rc)})")
        print(f"requeued job {job}: {why}", file=sys.stderr, flush=True)
        return "requeued", rc
    (run_dir / TRAIN_EXIT).write_text(f"{rc}\n")
    return "done" if rc == 0 else "failed", rc


def main(argv: list[str] | None = None) -> None:
    """`python -m unlearn.sweep.outcome RUN_DIR MAX_RETRIES STOPPED JOB EXIT [EXIT ...]`: decides, requeues
    job JOB (an array task, 12_3) if that is the decision, writes what the files must say, and prints
    `requeued`, `done` or `failed` last (slurm/train-task.sh acts on it)."""
    from unlearn.sweep import queue

    args = sys.argv[1:] if argv is None else argv
    try:
        run_dir, max_retries, stopped, job, *exits = args
        codes, limit = [int(e) for e in exits], int(max_retries)
    except ValueError:
        raise UserError("usage: python -m unlearn.sweep.outcome RUN_DIR MAX_RETRIES STOPPED(0|1) JOB EXIT "
                        f"[EXIT ...]; got {args}") from None
    what, _ = conclude(Path(run_dir), codes, stopped == "1", limit, job, lambda: queue.requeue(job.split()[0]))
    print(what)


if __name__ == "__main__":
    from unlearn.errors import guarded

    guarded(main)
