"""Successive halving over a sweep's eval rounds (grid file `search: halving`).

    search: halving
    halving: {eta: 2, min_rounds: 1, min_points: 1}

Round r is the r-th checkpoint step, the same in every grid point (save_every_n_steps, 2 x, ...,
max_steps). A round is complete once every point still running has, at that step, an evaluated
checkpoint (eval.json), a failed evaluation (eval.error), or a run that ended before it (train.exit,
written by the training task). Then the round's evaluated points are ranked by the grid's select:
rule and, from round `min_rounds` on (never after the last round), the worst stop: of n ranked,
ceil(n / eta), at least `min_points`, go on. A point whose eval failed is not ranked and goes on;
a run that ended is out.

Evaluation while training: on SLURM a halving sweep's eval jobs are submitted held, not `afterany` on
their run; the training task releases each as soon as its checkpoint is written (`watch`), and the
rest when it ends. (The local executor starts each eval once its checkpoint is written.)

Stopping: runs/<name>/STOP holds the reason; the training loop checks it at every step boundary
(unlearn.train.guards.stop_file), saves a final checkpoint and ends normally (exit 0). Its eval jobs
for steps it never reached end at once without evaluating. Checkpoints and evals stay.

Who decides: whoever finishes. Every eval job and every training task that ends calls `decide`; it
takes a lock, decides each complete round not yet decided, in order, and appends it to halving.json.
An eval landing late or out of order only makes a later call find the round complete.

Ranking: the select: rule chosen repeatedly (its winner, then the winner among the rest, ...). For
`score` that is the weighted sum, highest first; for `threshold`, points that qualify (by utility),
then the others by forget metric; for `pareto-knee`, knees peeled off the front one by one.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unlearn.errors import UserError
from unlearn.runs import COMPLETE, EVAL_ERROR, STOP, TRAIN_EXIT, evaluated, step_dir
from unlearn.sweep.grid import checkpoint_steps, open_sweep
from unlearn.sweep.progress import flat_metrics
from unlearn.sweep.select import Candidate, choose
from unlearn.sweep.spec import ReportSpec, SelectSpec, Sweep

RECORD = "halving.json"


def ranked(cands: list[Candidate], report: ReportSpec, sel: SelectSpec) -> list[Candidate]:
    """Best first, by repeatedly choosing with the rule (see the module docstring)."""
    order, rest = [], list(cands)
    while rest:
        try:
            winner, _ = choose(rest, report, sel)
        except UserError:  # threshold: none of the rest qualifies
            break
        order.append(winner)
        rest.remove(winner)
    sign = 1.0 if report.forget_goal == "max" else -1.0
    return order + sorted(rest, key=lambda c: -sign * c.metrics[report.forget_metric])


def needed(report: ReportSpec, sel: SelectSpec) -> list[str]:
    """Metrics a point's eval.json must hold to be ranked."""
    return list(sel.weights) if sel.rule == "score" else [report.forget_metric, report.utility_metric]


def score(c: Candidate, sel: SelectSpec) -> float | None:
    """The rule's number for a point: the weighted sum for `score`; None for the other rules (rank only)."""
    return sum(w * c.metrics[k] for k, w in sel.weights.items()) if sel.rule == "score" else None


def keep_count(n: int, sweep: Sweep) -> int:
    """How many of n ranked points go on after a cut."""
    return min(n, max(sweep.halving.min_points, math.ceil(n / sweep.halving.eta)))


def _point_at(folder: Path, name: str, step: int) -> tuple[str, Any]:
    """("eval", Candidate) | ("failed", reason) | ("ended", reason) | ("waiting", None) at a round's step."""
    run_dir = folder / "runs" / name
    ckpt = step_dir(run_dir, step)
    if (ckpt / COMPLETE).is_file() and evaluated(ckpt):
        return "eval", Candidate(name, step, str(ckpt), flat_metrics(ckpt / "eval.json"))
    if (ckpt / COMPLETE).is_file() and (ckpt / EVAL_ERROR).is_file():
        return "failed", "eval failed: " + (ckpt / EVAL_ERROR).read_text().strip()
    if not (ckpt / COMPLETE).is_file() and (run_dir / TRAIN_EXIT).is_file():
        return "ended", f"run ended before step {step} (exit status {(run_dir / TRAIN_EXIT).read_text().strip()})"
    return "waiting", None


def read_record(folder: Path) -> dict[str, Any]:
    path = Path(folder) / RECORD
    return json.loads(path.read_text()) if path.is_file() else {"rounds": []}


@contextmanager
def _locked(path: Path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # eval jobs on any node of a shared filesystem decide one at a time
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def decide(folder: str | Path) -> list[dict[str, Any]]:
    """Decide every complete round not decided yet (in order); write STOP files and halving.json.
    Returns the rounds decided by this call ([] for a sweep without search: halving)."""
    folder = Path(folder)
    sweep, pts = open_sweep(folder)
    if sweep.search != "halving":
        return []
    with _locked(folder / ".halving.lock"):
        record = read_record(folder)
        out = []
        steps = checkpoint_steps(pts[0].config)
        for number, step in enumerate(steps[:-1], start=1):  # nothing to stop after the last round
            if number <= len(record["rounds"]):
                continue
            gone = {e["run"] for r in record["rounds"] for e in r["stopped"] + r["ended"]}
            states = {p.name: _point_at(folder, p.name, step) for p in pts if p.name not in gone}
            if any(kind == "waiting" for kind, _ in states.values()):
                break
            entry = _round(sweep, number, step, states)
            for e in entry["stopped"]:
                (folder / "runs" / e["run"] / STOP).write_text(e["why"] + "\n")
            record["rounds"].append(entry)
            out.append(entry)
        if out:
            record.update(eta=sweep.halving.eta, min_rounds=sweep.halving.min_rounds,
                          min_points=sweep.halving.min_points, rule=sweep.select.rule, rounds=record["rounds"])
            tmp = folder / f".{RECORD}.tmp{os.getpid()}"
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, folder / RECORD)  # readers (--status) never see half a file
    return out


def _round(sweep: Sweep, number: int, step: int, states: dict[str, tuple[str, Any]]) -> dict[str, Any]:
    """One round's decision from its points' states (all known)."""
    report, sel = sweep.report, sweep.select
    evaluated = [c for kind, c in states.values() if kind == "eval"]
    scorable = [c for c in evaluated if all(k in c.metrics for k in needed(report, sel))]
    unscored = [{"run": name, "why": why} for name, (kind, why) in states.items() if kind == "failed"]
    unscored += [{"run": c.run, "why": f"eval.json lacks {[k for k in needed(report, sel) if k not in c.metrics]}"}
                 for c in evaluated if c not in scorable]
    order = ranked(scorable, report, sel)
    cut = number >= sweep.halving.min_rounds
    keep = keep_count(len(order), sweep) if cut else len(order)
    rows = [{"run": c.run, "rank": i + 1, "score": score(c, sel),
             **{k: c.metrics[k] for k in needed(report, sel)}} for i, c in enumerate(order)]
    last_kept = rows[keep - 1] if keep else None
    stopped = [{"run": row["run"], "why": _why(number, step, row, last_kept, len(order), sel)} for row in rows[keep:]]
    return {"round": number, "step": step, "decided": time.strftime("%Y-%m-%dT%H:%M:%S"), "cut": cut,
            "kept": keep, "ranked": rows, "stopped": stopped, "unscored": unscored,
            "ended": [{"run": name, "why": why} for name, (kind, why) in states.items() if kind == "ended"]}


def _why(number: int, step: int, row: dict, last_kept: dict, n: int, sel: SelectSpec) -> str:
    """e.g. "halving round 1 (step 40): rank 6 of 8 by score, score -0.52 below the cut -0.31 (rank 4, the last kept)"."""
    head = f"halving round {number} (step {step}): rank {row['rank']} of {n} by {sel.rule}"
    if row["score"] is None:
        return f"{head}, below the cut after rank {last_kept['rank']} ({last_kept['run']})"
    return f"{head}, score {row['score']:.4g} below the cut {last_kept['score']:.4g} ({last_kept['run']}, rank " \
           f"{last_kept['rank']})"


def status_lines(folder: str | Path) -> list[str]:
    """For --status: each decided round (ranked, kept, the cut) and each stopped point with its reason."""
    record = read_record(Path(folder))
    if not record["rounds"]:
        return []
    lines = [f"successive halving (eta {record['eta']:g}, rule {record['rule']}):"]
    for r in record["rounds"]:
        cut = f"kept {r['kept']} of {len(r['ranked'])}" if r["cut"] else "no cut (before min_rounds)"
        lines.append(f"  round {r['round']} (step {r['step']}): {cut}"
                     + "".join(f"; {e['run']} not ranked: {e['why']}" for e in r["unscored"])
                     + "".join(f"; {e['run']} out: {e['why']}" for e in r["ended"]))
        lines += [f"    stopped {e['run']}: {e['why']}" for e in r["stopped"]]
    return lines


def stopped_at(folder: str | Path) -> dict[str, int]:
    """Run name -> the round that stopped it."""
    return {e["run"]: r["round"] for r in read_record(Path(folder))["rounds"] for e in r["stopped"]}


def skip_eval(ckpt: str | Path) -> str:
    """Why an eval job need not run ("" = run it): its checkpoint was never written because halving
    (or a user's STOP) stopped the run before that step, or the run ended (train.exit) without it."""
    ckpt = Path(ckpt)
    run_dir = ckpt.parent.parent
    if ckpt.is_dir():
        return ""
    if (run_dir / STOP).is_file():
        return f"skipped {ckpt.name}: the run stopped before it ({(run_dir / STOP).read_text().strip()})"
    if (run_dir / TRAIN_EXIT).is_file():
        return f"skipped {ckpt.name}: the run ended before it (exit status {(run_dir / TRAIN_EXIT).read_text().strip()})"
    return ""


def _eval_ids(folder: Path) -> list[str]:
    """Eval job ids in evals.tsv order (jobs.txt of slurm/sweep.sh or submitit_jobs.txt); [] until written."""
    for name in ("jobs.txt", "submitit_jobs.txt"):
        path = folder / name
        if path.is_file():
            rows = dict(line.split(" ", 1) for line in path.read_text().splitlines() if " " in line)
            return rows.get("eval", "").split()
    return []


def release(folder: str | Path, name: str, released: set[str], final: bool = False) -> None:
    """`scontrol release` the held eval jobs of run `name` whose checkpoint is complete (all when `final`:
    the run is over); `released` remembers them between calls."""
    import subprocess

    folder = Path(folder)
    rows = [line.split("\t") for line in (folder / "evals.tsv").read_text().splitlines()]
    ids = _eval_ids(folder)
    if len(ids) != len(rows):  # submission still under way
        return
    for job, (_, run, _, ckpt) in zip(ids, rows):
        if run == name and job not in released and (final or (Path(ckpt) / COMPLETE).is_file()):
            subprocess.run(["scontrol", "release", job], capture_output=True)  # fails harmlessly if not held
            released.add(job)


def watch(folder: str | Path, name: str, every_s: float = 2.0) -> None:
    """Release run `name`'s eval jobs as its checkpoints appear, and all the rest once the run is over
    (runs/NAME/train.exit, written by its training task)."""
    released: set[str] = set()
    while not (Path(folder) / "runs" / name / TRAIN_EXIT).is_file():
        release(folder, name, released)
        time.sleep(every_s)
    while len(released) < sum(1 for line in (Path(folder) / "evals.tsv").read_text().splitlines()
                              if line.split("\t")[1] == name):
        release(folder, name, released, final=True)  # retried until the submission wrote the ids
        time.sleep(every_s)


def sweep_of(ckpt: str | Path) -> Path | None:
    """The sweep folder of a checkpoint runs/<name>/checkpoints/step-X (None outside a sweep)."""
    parents = Path(ckpt).resolve().parents
    return parents[3] if len(parents) > 3 and (parents[3] / "tasks.txt").is_file() else None


def main(argv: list[str] | None = None) -> None:
    """`python -m unlearn.sweep.halving SWEEP_DIR | --skip CHECKPOINT | --watch SWEEP_DIR RUN`: what the
    sweep's jobs call. SWEEP_DIR: decide the complete rounds; --skip: print why and exit 0 if the eval
    need not run, else exit 1; --watch: release RUN's held eval jobs (see `watch`)."""
    import sys

    from unlearn.errors import guarded

    args = sys.argv[1:] if argv is None else argv

    def job() -> None:
        if args[:1] == ["--skip"] and len(args) == 2:
            why = skip_eval(args[1])
            print(why or f"{args[1]}: evaluate")
            raise SystemExit(0 if why else 1)
        if args[:1] == ["--watch"] and len(args) == 3:
            watch(args[1], args[2])
            return
        if len(args) != 1:
            raise UserError("usage: python -m unlearn.sweep.halving SWEEP_DIR | --skip CHECKPOINT | "
                            "--watch SWEEP_DIR RUN")
        for r in decide(args[0]):
            print(f"halving round {r['round']} (step {r['step']}): kept {r['kept']}, stopped "
                  f"{[e['run'] for e in r['stopped']] or 'none'}", flush=True)

    guarded(job)


if __name__ == "__main__":
    main()
