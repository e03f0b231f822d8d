"""What SLURM says of a sweep's eval jobs: pending, running, done or failed, read with `sacct`.

Both submission paths record the job ids in the sweep folder (jobs.txt from slurm/sweep.sh,
submitit_jobs.txt from launch/sweep.py) and name each eval job `eval-<run>-<step>`, so one sacct call
gives the state of every eval. The files beside the checkpoint stay the last word: an eval.json with every
suite (runs.evaluated) = done, eval.error = failed; SLURM adds what files cannot say (waiting in the queue, running now, killed
before it could write eval.error: time limit, out of memory, cancelled).
"""

from __future__ import annotations

import shutil
import subprocess
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
