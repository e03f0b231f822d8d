"""What SLURM says of a sweep's jobs, read with `sacct` and `squeue`.

Both submission paths record the job ids in the sweep folder (jobs.txt from slurm/sweep.sh,
submitit_jobs.txt from launch/sweep.py).

Eval jobs are named `eval-<run>-<step>`, so one sacct call gives the state of every eval. The files
beside the checkpoint stay the last word: an eval.json with every suite (runs.evaluated) = done,
eval.error = failed; SLURM adds what files cannot say (waiting in the queue, running now, killed before
it could write eval.error: time limit, out of memory, cancelled).

Training tasks (`train_tasks`): the state of each one's current incarnation (squeue while it is in
the queue, with the reason it waits; else sacct, with its exit code) and the states its earlier
incarnations ended in (REQUEUED, NODE_FAIL, PREEMPTED), which files cannot say either.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

JOB_FILES = ("jobs.txt", "submitit_jobs.txt")
"""`<kind> <id> <id> ...` lines written at submission (kind: train, eval, report)."""

STATE_OF = {"PENDING": "pending", "REQUEUED": "pending", "RESIZING": "pending", "SUSPENDED": "pending",
            "RUNNING": "running", "COMPLETING": "running", "CONFIGURING": "running", "COMPLETED": "done"}
"""SLURM job states (sacct's first word) -> eval state; every other state (FAILED, TIMEOUT, CANCELLED,
OUT_OF_MEMORY, NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE) is `failed`."""


def job_ids(folder: Path, kind: str = "eval") -> list[str]:
    """Job ids of `kind` recorded in the sweep folder (empty when it was never submitted to SLURM)."""
    ids = []
    for name in JOB_FILES:
        path = Path(folder) / name
        if path.is_file():
            for line in path.read_text().splitlines():
                words = line.split()
                if words and words[0] == kind:
                    ids += [w.split(";")[0] for w in words[1:]]
    return ids


def parse_sacct(text: str) -> dict[tuple[str, int], tuple[str, str]]:
    """sacct `-n -P -X --format=JobName,State` lines -> {(run, step): (eval state, SLURM state)}.
    A requeued job appears once per attempt; the last line wins, as sacct lists attempts in order."""
    out = {}
    for line in text.splitlines():
        name, _, slurm_state = line.partition("|")
        run, _, step = name.removeprefix("eval-").rpartition("-")
        if not name.startswith("eval-") or not step.isdigit():
            continue
        word = slurm_state.split()[0] if slurm_state.split() else "UNKNOWN"
        out[(run, int(step))] = (STATE_OF.get(word, "failed"), word)
    return out


def eval_jobs(folder: Path) -> tuple[dict[tuple[str, int], tuple[str, str]], str]:
    """({(run, step): (state, SLURM state)}, note). The note says why SLURM was not asked, if it was not."""
    ids = job_ids(folder)
    if not ids:
        return {}, "no eval jobs recorded (jobs.txt): states from the checkpoint folders"
    if not shutil.which("sacct"):
        return {}, "sacct not found: states from the checkpoint folders"
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "--format=JobName,State", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return {}, "sacct timed out: states from the checkpoint folders"
    if out.returncode != 0:
        return {}, f"sacct failed ({out.stderr.strip()[:120]}): states from the checkpoint folders"
    return parse_sacct(out.stdout), ""


def eval_state(files_state: str, slurm: tuple[str, str] | None) -> tuple[str, str]:
    """(state, detail) of one checkpoint's eval. files_state: done (runs.evaluated) | failed (eval.error) |
    waiting (complete checkpoint, neither file) | none (no checkpoint yet)."""
    if files_state in ("done", "failed"):
        return files_state, ""
    if slurm is None:
        return files_state, ""
    state, word = slurm
    if state == "done" and files_state == "none":  # no checkpoint at that step: the run stopped before it
        return "skipped", ""
    if state == "done":  # the job ended well but left no eval.json: say so rather than call it done
        return "failed", f"job {word} without eval.json"
    return state, word if state == "failed" else ""


LOST = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
"""States a training task's current incarnation can end in for good (a requeued one is PENDING again)."""


@dataclass(frozen=True)
class Task:
    """What the scheduler says of one grid point's training task."""

    job: str
    """Its job id (array task: 12_3)."""
    state: str
    """SLURM state of its current incarnation: PENDING, RUNNING, COMPLETED, FAILED, NODE_FAIL, ..."""
    detail: str = ""
    """Why it waits (squeue's reason: Resources, BeginTime, JobArrayTaskLimit, ...) or how it ended
    (sacct's ExitCode, status:signal)."""
    history: tuple[str, ...] = ()
    """The states its earlier incarnations ended in, oldest first (REQUEUED, NODE_FAIL, PREEMPTED)."""

    def describe(self, detail: bool = True) -> str:
        """`job 12_3 PENDING (BeginTime), requeued 2x (NODE_FAIL, REQUEUED)`; detail=False leaves out why
        it waits or its exit code (where the task's own exit status says more)."""
        detail = f" ({self.detail})" if detail and self.detail and self.detail not in ("None", "0:0") else ""
        before = f", requeued {len(self.history)}x ({', '.join(self.history)})" if self.history else ""
        return f"job {self.job} {self.state}{detail}{before}"


def task_ids(folder: Path, count: int) -> list[str]:
    """The training task of each of the `count` grid points (in tasks.txt order; with runs_per_gpu: K
    a task trains the K points of its line); [] when never submitted to SLURM. jobs.txt holds the
    array's id (tasks are ID_i), submitit_jobs.txt one id per task."""
    ids = job_ids(folder, "train")
    path = Path(folder) / "tasks.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    task_of = [t for t, line in enumerate(lines) for _ in line.split()]
    if len(ids) == 1 and "_" not in ids[0]:
        ids = [f"{ids[0]}_{t}" for t in range(len(lines))]
    return [ids[t] for t in task_of] if len(ids) == len(lines) and len(task_of) == count else []


def train_tasks(folder: Path, count: int) -> tuple[list[Task | None], str]:
    """([Task or None per grid point], note): the note says why SLURM was not asked, if it was not."""
    ids = task_ids(folder, count)
    if not ids:
        return [None] * count, "no training jobs recorded: states from the run folders"
    if not (shutil.which("sacct") and shutil.which("squeue")):
        return [None] * count, "sacct/squeue not found: states from the run folders"
    arrays = sorted({i.split("_")[0] for i in ids})
    try:
        acct = subprocess.run(["sacct", "-n", "-P", "-X", "-D", "--format=JobID,State,ExitCode",
                               "-j", ",".join(arrays)], capture_output=True, text=True, timeout=30)
        live = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(arrays)],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return [None] * count, "sacct/squeue timed out: states from the run folders"
    if acct.returncode != 0:
        return [None] * count, f"sacct failed ({acct.stderr.strip()[:120]}): states from the run folders"
    runs: dict[str, list[tuple[str, str]]] = {}
    for line in acct.stdout.splitlines():  # one line per incarnation, in order
        job, state, code = (line.split("|") + ["", ""])[:3]
        runs.setdefault(job, []).append((state.split()[0] if state.split() else "UNKNOWN", code))
    queued = {}
    for line in live.stdout.splitlines() if live.returncode == 0 else []:  # a job that left the queue: sacct
        job, state, why = (line.split("|") + ["", ""])[:3]
        queued[job] = (state, why)
    out: list[Task | None] = []
    for job in ids:
        past = runs.get(job, [])
        if job in queued:
            state, detail = queued[job]
            history = past[:-1] if past and past[-1][0] in ("PENDING", "RUNNING", state) else past
        elif past:
            (state, detail), history = past[-1], past[:-1]
        else:
            out.append(None)
            continue
        out.append(Task(job, state, detail, tuple(s for s, _ in history)))
    return out, ""


def requeue(job: str) -> bool:
    """`scontrol requeue JOB` (an array task: 12_3) from inside it. True when requeued, or when the job
    is no longer RUNNING (another of its ranks requeued it, or it is being cancelled: its fate is the
    scheduler's); False when scontrol refused."""
    state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    if state != "RUNNING":
        print(f"job {job} not requeued: it is {state or 'gone'}", file=sys.stderr, flush=True)
        return True
    out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if out.returncode:
        print(f"scontrol requeue {job} failed: {out.stderr.strip()}", file=sys.stderr, flush=True)
    return out.returncode == 0
