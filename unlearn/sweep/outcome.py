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

Each run of a task decides for itself: a task of K runs (cluster profile `runs_per_gpu: K`) is
requeued once when any of them needs it; its runs that ended for good meanwhile are left out of the
next incarnation (logs/.requeued-JOB names the runs it trains: `requeued_runs`).

What the files say (read by `launch/sweep.py --status` and the report beside the scheduler's state):
runs/NAME/train.exit holds the run's exit status once it ended for good, runs/NAME/train.retries one
line per retry (`retry K/MAX: REASON (job ID)`).

An eval job of slurm/eval-task.sh decides here too (`conclude_eval`): stopped, it is requeued up to
max_retries times (the suites that finished stay in eval.json), then eval.error says it gave up.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Callable

from unlearn.errors import EXIT_DIVERGED, EXIT_REQUEUE, EXIT_USER_ERROR, UserError
from unlearn.runs import EVAL_ERROR, EVAL_FILE, TRAIN_EXIT

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
    """`conclude_runs` for a task of one run (in SWEEP/runs/NAME)."""
    run_dir = Path(run_dir)
    ends = conclude_runs(run_dir.parent.parent, {run_dir.name: exits}, stopped, max_retries, job,
                         lambda kinds: requeue())
    return ends[run_dir.name]


def conclude_runs(sweep_dir: Path, exits: dict[str, list[int]], stopped: bool, max_retries: int, job: str,
                  requeue: Callable[[set[str]], bool]) -> dict[str, tuple[str, int]]:
    """Decide for each run of a task that ended (`exits`: its ranks' exit statuses); if any must run again,
    call `requeue(kinds)` once (kinds: requeue and/or retry; False: nobody can, e.g. no scheduler); write
    what the files must say (a retry line, or train.exit for a run that ended for good; the runs the
    next incarnation trains); return {run: (requeued | done | failed, its exit status)}. A retry is
    counted once per job incarnation (`job` names it), however many of its ranks report the failure."""
    sweep_dir = Path(sweep_dir)
    decided = {}
    for name, codes in exits.items():
        lines = retries(sweep_dir / "runs" / name)
        ours = [line for line in lines if line.endswith(f"(job {job})")]  # another rank of this try wrote it
        rc = next((r for r in codes if r in FINAL), next((r for r in codes if r), 0))
        decided[name] = (decide(codes, stopped, len(lines) - len(ours), max_retries), rc, len(lines), bool(ours))
    again = [name for name, (what, *_) in decided.items() if what in ("requeue", "retry")]
    left = sweep_dir / "logs" / f"{NEXT}{job.split()[0]}"
    if again and (len(again) < len(decided) or left.is_file()):  # before the requeue, which may end us
        left.parent.mkdir(parents=True, exist_ok=True)
        left.write_text(" ".join(again) + "\n")
    requeued = bool(again) and requeue({decided[name][0] for name in again})
    if not requeued:
        left.unlink(missing_ok=True)
    ends = {}
    for name, (what, rc, used, counted) in decided.items():
        run_dir = sweep_dir / "runs" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        if name in again and requeued:
            if what == "retry" and not counted:
                with (run_dir / RETRIES).open("a") as f:
                    f.write(f"retry {used + 1}/{max_retries}: {reason(rc)} (job {job})\n")
            why = (f"retry after {reason(rc)}" if what == "retry" else "the run saved after a stop"
                   if EXIT_REQUEUE in exits[name] else f"a stop came before the run could save ({reason(rc)})")
            runs = f" (run {name})" if len(decided) > 1 else ""
            print(f"requeued job {job}{runs}: {why}", file=sys.stderr, flush=True)
            ends[name] = ("requeued", rc)
        else:
            (run_dir / TRAIN_EXIT).write_text(f"{rc}\n")
            ends[name] = ("done" if rc == 0 else "failed", rc)
    return ends


NEXT = ".requeued-"
"""logs/.requeued-JOB: the runs of task JOB (12_3) that its next incarnation trains, written when it is
requeued while others of its runs ended for good; removed once the task ends for good."""


def requeued_runs(sweep_dir: Path, job: str) -> list[str] | None:
    """The runs of task `job` that its last requeue left to train (the others of its line of tasks.txt
    ended for good); None: train them all (a first start, a requeue by SLURM or by hand, a resubmitted
    sweep, a task of one run)."""
    path = Path(sweep_dir) / "logs" / f"{NEXT}{job}"
    return (path.read_text().split() or None) if path.is_file() else None


def task_exits(names: list[str], lines: list[str], srun_rc: int, ranks: int) -> dict[str, list[int]]:
    """Each run's exit statuses from its rank wrappers' `RUN EXIT` lines (slurm/train-task.sh), `ranks`
    lines per run. srun's own status stands in for a rank that left none (killed with its wrapper, or its
    node lost, when srun may even return 0: then 1)."""
    exits: dict[str, list[int]] = {name: [] for name in names}
    for line in lines:
        name, rc = line.split()
        exits[name].append(int(rc))
    return {name: codes + [srun_rc or 1] * (len(codes) < ranks) for name, codes in exits.items()}


def verdict(ends: dict[str, tuple[str, int]]) -> str:
    """A task's word for its runs' ends: requeued (any), done (all), else failed."""
    words = {what for what, _ in ends.values()}
    return "requeued" if "requeued" in words else "done" if words == {"done"} else "failed"


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
"""A process killed by one of these was stopped (preemption, scancel, the warning before the time limit)."""


def conclude_eval(ckpt: Path, rc: int, stopped: bool, restarts: int, max_retries: int, job: str,
                  requeue: Callable[[], bool]) -> str:
    """How an sbatch eval job's evaluate.py ended (exit status `rc`; `stopped`: a stop signal reached the
    job's shell) -> done | requeued | failed. A stop (exit 3: the finished suites kept in eval.json;
    killed by SIGTERM/SIGUSR1; or any failure but a user error after a stop) is requeued while the job
    was requeued fewer than `max_retries` times (`restarts`; its next incarnation runs only the suites
    not in eval.json), else eval.error says it gave up. Any other failure leaves eval.error (the
    evaluation's own, or the exit status)."""
    if rc == 0:
        return "done"
    error = Path(ckpt) / EVAL_ERROR
    if rc == EXIT_REQUEUE or rc - 128 in STOP_SIGNALS or (stopped and rc != EXIT_USER_ERROR):
        if restarts < max_retries:  # said first: the requeue ends this job's processes
            print(f"requeueing eval job {job}: stopped ({reason(rc)}); requeue {restarts + 1} of {max_retries}",
                  file=sys.stderr, flush=True)
            if requeue():
                return "requeued"
        why = f"after {max_retries} requeue(s) (max_retries)" if restarts >= max_retries else "(scontrol requeue failed)"
        error.write_text(f"stopped {restarts + 1} time(s) by a signal (preemption, time limit or scancel), the last "
                         f"in job {job} ({reason(rc)}); gave up {why}; not run: {', '.join(_not_run(ckpt)) or '?'}\n")
    elif not error.is_file():
        error.write_text(f"evaluate.py exited with status {rc} (see the job's log)\n")
    return "failed"


def _not_run(ckpt: Path) -> list[str]:
    """The suites an interrupted evaluation left for later (eval.json's `incomplete`), [] if unknown."""
    import json

    try:
        return list(json.loads((Path(ckpt) / EVAL_FILE).read_text())["incomplete"]["not_run"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def main(argv: list[str] | None = None) -> None:
    """`python -m unlearn.sweep.outcome SWEEP_DIR MAX_RETRIES STOPPED JOB SRUN_EXIT RANKS EXITS NAME...`
    (slurm/train-task.sh, once srun has returned): decides for runs NAME... from the file EXITS (`RUN
    EXIT` per rank, RANKS per run) and srun's status, requeues job JOB (an array task: 12_3) once if
    that is the decision, writes what the files must say, and prints `requeued`, `done` or `failed`
    last (the script acts on it).

    `python -m unlearn.sweep.outcome --eval CHECKPOINT MAX_RETRIES STOPPED JOB RESTARTS EXIT`
    (slurm/eval-task.sh, once evaluate.py has returned): the same for an eval job (`conclude_eval`)."""
    from unlearn.sweep import queue

    args = sys.argv[1:] if argv is None else argv
    # `scontrol requeue` ends the job's processes with SIGTERM, this one too: outlive it to write what the
    # files must say (a retry line, train.exit, eval.error) and print the verdict (SIGKILL comes KillWait later)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args[:1] == ["--eval"]:
        try:
            ckpt, limit, stopped, job, restarts, rc = args[1:]
            limit, restarts, rc = int(limit), int(restarts), int(rc)
        except ValueError:
            raise UserError("usage: python -m unlearn.sweep.outcome --eval CHECKPOINT MAX_RETRIES STOPPED(0|1) JOB "
                            f"RESTARTS EXIT; got {args}") from None
        print(conclude_eval(Path(ckpt), rc, stopped == "1", restarts, limit, job, lambda: queue.requeue(job)))
        return
    try:
        sweep_dir, max_retries, stopped, job, srun_rc, ranks, exits_file, *names = args
        lines = Path(exits_file).read_text().splitlines() if Path(exits_file).is_file() else []
        exits = task_exits(names, lines, int(srun_rc), int(ranks))
        limit = int(max_retries)
    except (ValueError, KeyError):
        raise UserError("usage: python -m unlearn.sweep.outcome SWEEP_DIR MAX_RETRIES STOPPED(0|1) JOB SRUN_EXIT "
                        f"RANKS EXITS_FILE NAME [NAME ...] (EXITS_FILE: `NAME EXIT` lines); got {args}") from None
    if not names:
        raise UserError(f"python -m unlearn.sweep.outcome: no run NAME given; got {args}")
    ends = conclude_runs(Path(sweep_dir), exits, stopped == "1", limit, job,
                         lambda kinds: queue.requeue(job.split()[0]))
    print(verdict(ends))


if __name__ == "__main__":
    from unlearn.errors import guarded

    guarded(main)
