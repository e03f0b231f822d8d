"""A sweep's report: status table, report.csv, report.png (forget metric vs utility, Pareto front),
and one TensorBoard HParams session per run so the HParams tab compares the grid.
"""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

from unlearn import manifest
from unlearn.errors import UserError
from unlearn.runs import COMPLETE, TRAIN_EXIT, evaluated, step_dir
from unlearn.sweep import halving, outcome, queue, select
from unlearn.sweep.grid import checkpoint_steps, open_sweep
from unlearn.sweep.progress import run_status
from unlearn.sweep.select import pareto_front
from unlearn.sweep.spec import Point, ReportSpec, Sweep

HPARAMS_DIR = "hparams"
BEST_ERROR = "best.error"
"""Beside best.json: why the report could not write it (the chosen checkpoint's files are damaged)."""
"""Under each run's tb/: the HParams session (axis values + final eval metrics), rewritten per report."""


def status_table(sweep: Sweep, pts: list[Point]) -> str:
    """One line per run: state (the files' and the scheduler's), newest checkpoint, its evals by state
    (done, running, pending in the queue, waiting to be submitted, failed), its training job, newest eval
    metrics; then every run lost for good and every failed eval, with the reason."""
    spec = sweep.report
    jobs, note = queue.eval_jobs(sweep.folder)
    tasks, task_note = queue.train_tasks(sweep.folder, len(pts))
    notes = [n for n in (task_note, note if sweep.eval_enabled else "") if n]
    lines = [f"sweep {sweep.folder}  ({len(pts)} runs)" + (f"  [{'; '.join(dict.fromkeys(notes))}]" if notes else "")]
    stopped = halving.stopped_at(sweep.folder)
    lost = []
    for p, task in zip(pts, tasks):
        st = run_status(sweep, p)
        shown = {k: v for k, v in st.latest_eval.items() if k in (spec.forget_metric, spec.utility_metric)}
        shown = shown or dict(list(st.latest_eval.items())[:4])
        metrics = " ".join(f"{k}={v:.4g}" for k, v in shown.items()) or "-"
        counts = Counter(state for state, _ in eval_states(sweep, p, st, jobs).values())
        states = ", ".join(f"{counts[s]} {s.upper() if s == 'failed' else s}" for s in EVAL_STATES if counts[s])
        state, job = run_state(sweep, p, st, task)
        cut = f" STOPPED r{stopped[p.name]}" if p.name in stopped else ""
        lines.append(f"{p.name:<40} {state:<8} step {st.step:>5}/{st.max_steps:<5} "
                     f"evals {st.evaluated}/{st.checkpoints}{f' ({states})' if states else ''}{cut}"
                     f"{f'  [{job}]' if job else ''}  {metrics}")
        if state == LOST:
            lost.append(f"  {p.name}: {job}")
    if lost:
        lines.append(f"{len(lost)} run(s) lost for good (their complete checkpoints are still evaluated; "
                     "rerun: python launch/unlearn.py --resume ... or resubmit the sweep):")
        lines += lost
    failures = failed_evals(sweep, pts, jobs)
    if failures:
        lines.append(f"{len(failures)} failed eval(s) (eval.error beside the checkpoint, or the job's "
                     "SLURM state; rerun: python launch/evaluate.py CHECKPOINT ...):")
        lines += [f"  {run} step {step}: {reason}" for run, step, reason in failures]
    return "\n".join(lines + halving.status_lines(sweep.folder))


LOST = "FAILED"
"""The run state of a run whose training task ended for good without its final checkpoint."""


def run_state(sweep: Sweep, p: Point, st=None, task: queue.Task | None = None) -> tuple[str, str]:
    """(state, what its training job says). state: done | stopped (halving) | ended (stopped early
    by itself) | FAILED (its task ended for good without the final checkpoint: lost) | queued |
    running | pending (no checkpoint and nothing known of a job). The job part: the scheduler's word
    for the current incarnation and the earlier ones, the retries used, the exit status in words."""
    st = st or run_status(sweep, p)
    run_dir = sweep.folder / "runs" / p.name
    exit_file = run_dir / TRAIN_EXIT
    rc = int(exit_file.read_text()) if exit_file.is_file() else None
    said = [task.describe(detail=not rc)] if task else []  # sacct's exit code of a batch script is no clue
    tries = outcome.retries(run_dir)
    if tries:
        said.append(tries[-1].split(":")[0].replace("retry", "retried"))
    if rc:
        said.append(outcome.reason(rc))
    # runs_per_gpu: K: a run that ended for good while its task was requeued for another run of it
    left = outcome.requeued_runs(sweep.folder, task.job) if task and rc is not None else None
    live = task is not None and (left is None or p.name in left)
    if st.state == "done":
        state = "done"
    elif p.name in halving.stopped_at(sweep.folder):
        state = "stopped"
    elif live and task.state in ("PENDING", "REQUEUED", "SUSPENDED", "RESIZING"):
        state = "queued"  # the scheduler's word first: a requeued task's files still say how it ended
    elif live and task.state in ("RUNNING", "COMPLETING", "CONFIGURING"):
        state = "running"
    elif rc or (rc is None and task and task.state in queue.LOST):
        state = LOST
    elif rc == 0 or (task and task.state == "COMPLETED"):
        state = "ended"
    else:
        state = st.state
    return state, ", ".join(said)


def lost_runs(sweep: Sweep, pts: list[Point]) -> list[tuple[str, str]]:
    """(run, what its job says) of every run lost for good."""
    tasks, _ = queue.train_tasks(sweep.folder, len(pts))
    return [(p.name, job) for p, task in zip(pts, tasks) for state, job in [run_state(sweep, p, task=task)]
            if state == LOST]


EVAL_STATES = ("done", "running", "pending", "waiting", "skipped", "failed")
"""waiting: the checkpoint is complete but no eval has run and SLURM knows no job for it (the local
executor's next wave, or a sweep submitted without evals recorded); skipped: the eval job ended
without a checkpoint to evaluate (its run stopped or ended before that step: successive halving)."""


def eval_states(sweep: Sweep, p: Point, st=None, jobs=None) -> dict[int, tuple[str, str]]:
    """{step: (state, detail)} for each checkpoint step the run will save (see unlearn.sweep.queue)."""
    st = st or run_status(sweep, p)
    jobs = queue.eval_jobs(sweep.folder)[0] if jobs is None else jobs
    run_dir = sweep.folder / "runs" / p.name
    failed = dict(st.failed_evals)
    out = {}
    for step in checkpoint_steps(p.config) if sweep.eval_enabled else []:
        folder = step_dir(run_dir, step)
        files = ("done" if evaluated(folder) else "failed" if step in failed
                 else "waiting" if (folder / COMPLETE).is_file() else "none")
        state, detail = queue.eval_state(files, jobs.get((p.name, step)))
        if state != "none":
            out[step] = (state, failed.get(step, detail))
    return out


def failed_evals(sweep: Sweep, pts: list[Point], jobs=None) -> list[tuple[str, int, str]]:
    """(run, step, reason) of every checkpoint whose last evaluation failed: its eval.error, or the SLURM
    state of an eval job that ended without writing one (time limit, out of memory, cancelled)."""
    jobs = queue.eval_jobs(sweep.folder)[0] if jobs is None else jobs
    return [(p.name, step, reason or "failed") for p in pts
            for step, (state, reason) in eval_states(sweep, p, jobs=jobs).items() if state == "failed"]


def _chosen(sweep: Sweep, folder: Path):
    """(winner, why) by the grid's select: rule among `folder`'s evaluated checkpoints; None while
    nothing qualifies (e.g. the report's metrics are not evaluated yet)."""
    try:
        return select.choose(select.candidates(folder), sweep.report, sweep.select)
    except UserError:
        return None


def write_report(sweep: Sweep, pts: list[Point]) -> tuple[Path, Path | None]:
    """report.csv (every run: axes, state and what its training job says (see `run_state`), newest eval
    metrics, `run_choice_step`: the checkpoint the grid's select: rule picks among this run's own, and
    `sweep_choice_step` on one row: best.json's pick, the same rule over every run's checkpoints; the two
    differ where a run's own best is not the sweep's, e.g. the knee of all runs' Pareto front lies on
    another of its checkpoints than the knee of its own), report.png (best.json's checkpoint marked),
    best.json, and HParams sessions holding each run's own choice's metrics."""
    rows = []
    tasks, _ = queue.train_tasks(sweep.folder, len(pts))
    for p, task in zip(pts, tasks):
        st = run_status(sweep, p)
        run_dir = sweep.folder / "runs" / p.name
        own = _chosen(sweep, run_dir) if run_dir.is_dir() else None
        state, job = run_state(sweep, p, st, task)
        rows.append({"run": p.name, **{k: v for k, v in p.values.items()}, "state": state, "job": job,
                     "step": st.step, "eval_step": st.eval_step, "run_choice_step": own[0].step if own else "",
                     "sweep_choice_step": "", **st.latest_eval})
        _write_hparams(sweep, p, own[0].metrics if own else st.latest_eval)
    best = _chosen(sweep, sweep.folder)
    (sweep.folder / BEST_ERROR).unlink(missing_ok=True)
    if best is not None:
        try:
            select.write_best(sweep.folder, *best, sweep.report, sweep.select)  # best.json, as `--best` writes it
        except manifest.Damaged as exc:  # the report is still written; the report job then fails with it
            (sweep.folder / BEST_ERROR).write_text(" ".join(str(exc).split()) + "\n")
        next(r for r in rows if r["run"] == best[0].run)["sweep_choice_step"] = best[0].step
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    csv_path = sweep.folder / "report.csv"
    spec = sweep.report
    pareto = _front_flags(rows, spec)
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns + ["pareto"])
        w.writeheader()
        for row, flag in zip(rows, pareto):
            w.writerow({**row, "pareto": "" if flag is None else int(flag)})
    png = _plot(sweep, rows, pareto, best[0] if best else None) if any(f is not None for f in pareto) else None
    return csv_path, png


def _front_flags(rows: list[dict], spec: ReportSpec) -> list[bool | None]:
    """Pareto flag per row; None for rows without both metrics (not evaluated yet)."""
    have = [i for i, r in enumerate(rows) if spec.forget_metric in r and spec.utility_metric in r]
    flags: list[bool | None] = [None] * len(rows)
    if not (spec.forget_metric and spec.utility_metric) or not have:
        return flags
    front = pareto_front([rows[i][spec.forget_metric] for i in have], [rows[i][spec.utility_metric] for i in have],
                         spec.forget_goal, spec.utility_goal)
    for i, flag in zip(have, front):
        flags[i] = flag
    return flags


def _plot(sweep: Sweep, rows: list[dict], pareto: list[bool | None], chosen=None) -> Path:
    import matplotlib  # plotting only when a report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = sweep.report
    fig, ax = plt.subplots(figsize=(10.4, 4.8))  # the plot, and the runs' names by number on the right
    front, points, labels = [], [], []
    for number, (row, flag) in enumerate(zip(rows, pareto), 1):
        if flag is None:
            continue
        x, y = row[spec.forget_metric], row[spec.utility_metric]
        ax.scatter([x], [y], s=60 if flag else 30, marker="*" if flag else "o",
                   color="tab:red" if flag else "tab:blue", zorder=3)
        points.append((x, y))
        labels.append(str(number))
        if flag:
            front.append((x, y))
    front.sort()
    ax.plot([x for x, _ in front], [y for _, y in front], color="tab:red", lw=1, label="Pareto front")
    if chosen is not None and spec.forget_metric in chosen.metrics and spec.utility_metric in chosen.metrics:
        ax.scatter([chosen.metrics[spec.forget_metric]], [chosen.metrics[spec.utility_metric]], s=160, marker="D",
                   facecolors="none", edgecolors="tab:green", linewidths=2, zorder=4,
                   label=f"chosen ({sweep.select.rule}): {chosen.run} step {chosen.step}")
    better = {"min": "lower is better", "max": "higher is better"}
    ax.set_xlabel(f"{spec.forget_metric} ({better[spec.forget_goal]})")
    ax.set_ylabel(f"{spec.utility_metric} ({better[spec.utility_goal]})")
    ax.set_title(f"sweep {sweep.name}: newest evaluated checkpoint per run")
    ax.legend(loc="best", fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0, 0.62, 1))
    place_labels(ax, points, labels)  # each point its row number in report.csv, none over another
    fig.text(0.64, 0.95, "\n".join(f"{n:>3}  {row['run']}" for n, row in enumerate(rows, 1)), va="top",
             fontsize=7, family="monospace")
    path = sweep.folder / "report.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


OFFSETS = [(dx, dy) for r in (4, 12, 20, 28) for dx, dy in ((r, r), (r, -r - 6), (-r - 6, r), (-r - 6, -r - 6),
                                                             (0, r + 4), (0, -r - 10), (r + 2, -3), (-r - 8, -3))]
"""Where a point's label may go, in points from the point: nearest first, farther rings after."""


def place_labels(ax, points: list[tuple[float, float]], labels: list[str]) -> list:
    """Annotate each point with its label at the first offset (OFFSETS) where it covers no label placed
    before it (greedy; points close together push their labels outwards); returns the texts."""
    ax.figure.canvas.draw()  # the axes' limits and layout are fixed at a draw: label boxes are measured in them
    renderer = ax.figure.canvas.get_renderer()
    placed, texts = [], []
    for (x, y), label in zip(points, labels):
        for dx, dy in OFFSETS:
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7)
            box = text.get_window_extent(renderer).expanded(1.1, 1.1)
            if not any(box.overlaps(other) for other in placed) or (dx, dy) == OFFSETS[-1]:
                break
            text.remove()
        placed.append(box)
        texts.append(text)
    return texts


def _write_hparams(sweep: Sweep, point: Point, metrics: dict[str, float]) -> None:
    """A fresh HParams session in runs/<run>/tb/hparams (axis values -> eval metrics)."""
    from unlearn.distributed import DistEnv
    from unlearn.logger import Writer

    logdir = sweep.folder / "runs" / point.name / "tb" / HPARAMS_DIR
    if logdir.exists():
        shutil.rmtree(logdir)  # one session per run, not one per report written
    writer = Writer(logdir, DistEnv(rank=0, local_rank=0, world_size=1))
    writer.hparams(dict(point.values), {f"eval/{k}": v for k, v in metrics.items()})
    writer.close()


def report_folder(sweep_dir: str) -> Path:
    """Write a sweep folder's report.csv/png and HParams sessions; say what was written."""
    sweep, pts = open_sweep(sweep_dir)
    csv_path, png = write_report(sweep, pts)
    print(f"wrote {csv_path}" + (f" and {png}" if png else " (no plot: report metrics not evaluated yet)"))
    lost, failures = lost_runs(sweep, pts), failed_evals(sweep, pts)
    if (sweep.folder / BEST_ERROR).is_file():
        raise UserError(f"no best.json: the chosen {(sweep.folder / BEST_ERROR).read_text().strip()}")
    if lost:
        run, job = lost[0]
        raise UserError(f"{len(lost)} run(s) lost for good, e.g. {run}: {job}; "
                        f"see python launch/sweep.py --status {sweep_dir}")
    if failures:
        run, step, reason = failures[0]
        raise UserError(f"{len(failures)} eval(s) failed, e.g. {run} step {step}: {reason}; "
                        f"see python launch/sweep.py --status {sweep_dir}")
    return csv_path
