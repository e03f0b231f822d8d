"""Submitting a sweep: plan the folder, then submitit jobs (`launch/sweep.py`) or the shell values that
`slurm/sweep.sh` turns into sbatch calls. Nothing here runs training or evaluation itself."""

from __future__ import annotations

import shlex

from unlearn.errors import UserError
from unlearn.sweep import colocate
from unlearn.sweep.grid import checkpoint_steps, load_sweep, plan
from unlearn.sweep.jobs import ROOT, EvalJob, ReportJob, TrainJob
from unlearn.sweep.profile import load_profile, sbatch_args, submitit_params
from unlearn.sweep.report import report_folder


def load(grid: str, overrides: list[str], profile: str = ""):
    """The sweep, its cluster profile, and its planned grid points (the sweep folder written)."""
    sweep = load_sweep(grid, overrides)
    if not (ROOT / sweep.ds_config).is_file():  # jobs run in the checkout; fail here, not in every job
        raise UserError(f"ds_config '{sweep.ds_config}' not found in {ROOT}; expected a file such as "
                        "ds_configs/zero2.json")
    prof = load_profile(profile or sweep.profile)
    colocate.check(prof, profile or sweep.profile, ROOT)  # K runs per GPU must fit it: before any job
    if prof.runs_per_gpu > 1 and sweep.search == "halving":
        raise UserError("sweep search: halving stops runs one by one; expected runs_per_gpu: 1 in the cluster "
                        "profile (K runs share one task)")
    return sweep, prof, plan(sweep, prof.runs_per_gpu)


STOP_SETUP = [f"source {shlex.quote(str(ROOT / 'slurm' / 'detach.sh'))}",
              "relay_stops USR2   # a stop sent to this shell goes on to submitit's handler: save, requeue",
              'srun() { detached_srun "$@"; }   # the srun below runs detached from this shell (detach.sh)']
"""Lines submitit puts before its `srun ... submitit.core._submit` in a training or eval job's batch
script, as slurm/train-task.sh and eval-task.sh do for the sbatch route: a stop sent to the batch step
reaches the run or the evaluation."""


def retries_of(sweep, prof) -> int:
    """The grid's max_retries, else the cluster profile's."""
    return prof.max_retries if sweep.max_retries is None else sweep.max_retries


def submit(grid: str, overrides: list[str], *, executor_kind: str = "slurm", profile: str = "",
           wait: bool = False) -> None:
    """Submit the grid: one job array of runs, an eval job per checkpoint, a report job after them."""
    import submitit  # heavy-ish and only needed to submit

    sweep, prof, pts = load(grid, overrides, profile)
    folder = str(sweep.folder.resolve())
    executor = submitit.AutoExecutor(folder=sweep.folder / "submitit" / "%j", cluster=executor_kind)

    def configure(kind: str, dependency: str = "", name: str = "") -> None:
        params = submitit_params(prof, kind)
        if executor_kind != "slurm":  # the local executor knows no SLURM options
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        else:
            if kind in ("train", "eval"):
                params["slurm_setup"] = STOP_SETUP
            if dependency == "hold":  # search: halving: TrainJob releases it once its checkpoint is written
                params["slurm_additional_parameters"] = {"hold": True}
            elif dependency:
                params["slurm_additional_parameters"] = {"dependency": dependency}
        executor.update_parameters(name=name or f"{sweep.name}-{kind}", **params)

    configure("train")
    tasks = colocate.groups([p.name for p in pts], prof.runs_per_gpu)
    with executor.batch():  # one job array
        task_jobs = [executor.submit(TrainJob(folder, g[0] if len(g) == 1 else g, sweep.ds_config,
                                              retries_of(sweep, prof))) for g in tasks]
    train_jobs = [task_jobs[p.index // prof.runs_per_gpu] for p in pts]  # per point: the task that trains it
    if executor_kind == "local" and sweep.search == "halving":  # evals as checkpoints appear
        _local_halving(sweep, prof, pts, train_jobs, executor, configure)
        return
    if executor_kind == "local":  # no dependencies locally: wait for each run before its evals
        for job in task_jobs:
            job.result()
    wanted = [(p, tj, step) for p, tj in zip(pts, train_jobs)
              for step in (checkpoint_steps(p.config) if sweep.eval_enabled else [])]

    def submit_eval(p, tj, step):
        configure("eval", "hold" if sweep.search == "halving" else f"afterany:{tj.job_id}", f"eval-{p.name}-{step}")
        ckpt = str(sweep.folder.resolve() / "runs" / p.name / "checkpoints" / f"step-{step:06d}")
        return executor.submit(EvalJob(ckpt, list(sweep.eval_args), retries_of(sweep, prof)))

    if executor_kind == "local":  # waves of array_parallelism evals, as SLURM would run them
        width = prof.array_parallelism or len(wanted) or 1
        failed = []
        for start in range(0, len(wanted), width):
            for job in [submit_eval(*w) for w in wanted[start:start + width]]:
                try:
                    job.result()
                except Exception as exc:  # submitit's FailedJobState: one line of it is the error
                    failed.append(str(exc).strip().splitlines()[-1][:300])
        report_folder(folder)
        if failed:
            raise UserError(f"{len(failed)} of {len(wanted)} eval jobs failed (first: {failed[0]}); "
                            f"see python launch/sweep.py --status {folder}")
        return
    eval_jobs = [submit_eval(*w) for w in wanted]
    after = eval_jobs or task_jobs  # the report waits for every eval (or every run without evals)
    configure("eval", "afterany:" + ":".join(j.job_id for j in after), f"{sweep.name}-report")
    report_job = executor.submit(ReportJob(folder))
    ids = {"train": [j.job_id for j in task_jobs], "eval": [j.job_id for j in eval_jobs],
           "report": [report_job.job_id]}
    (sweep.folder / "submitit_jobs.txt").write_text("".join(f"{k} {' '.join(v)}\n" for k, v in ids.items()))
    print(f"sweep {sweep.folder}: {len(pts)} runs in {len(task_jobs)} tasks, {len(eval_jobs)} eval jobs, report job "
          f"{report_job.job_id}", flush=True)
    if wait:
        for job in [*task_jobs, *eval_jobs, report_job]:
            job.result()  # raises if a job failed
        print(f"sweep {sweep.folder} finished", flush=True)


def _local_halving(sweep, prof, pts, train_jobs, executor, configure) -> None:
    """The local executor under search: halving: each checkpoint's eval starts once it is written (at
    most array_parallelism at once), so the rounds are decided while the runs train; evals of steps a
    stopped run never reached end at once (EvalJob). Then the report; raises if a run or eval failed."""
    import time

    from unlearn.runs import COMPLETE, step_dir

    # round by round: a round is decided once all its points are evaluated, before later rounds' evals
    wanted = sorted(((p, tj, step) for p, tj in zip(pts, train_jobs) for step in checkpoint_steps(p.config)),
                    key=lambda w: w[2])
    width = prof.array_parallelism or len(wanted)
    running, failed = [], []
    while wanted or running:
        for job in [j for j in running if j.done()]:
            running.remove(job)
            try:
                job.result()
            except Exception as exc:  # submitit's FailedJobState: one line of it is the error
                failed.append(str(exc).strip().splitlines()[-1][:300])
        for w in list(wanted):
            p, tj, step = w
            ckpt = step_dir(sweep.folder.resolve() / "runs" / p.name, step)
            if len(running) < width and ((ckpt / COMPLETE).is_file() or tj.done()):
                configure("eval", name=f"eval-{p.name}-{step}")
                running.append(executor.submit(EvalJob(str(ckpt), list(sweep.eval_args), retries_of(sweep, prof))))
                wanted.remove(w)
        time.sleep(0.5)
    for job in train_jobs:
        job.result()  # raises if a run failed
    report_folder(str(sweep.folder.resolve()))
    if failed:
        raise UserError(f"{len(failed)} eval jobs failed (first: {failed[0]}); see python launch/sweep.py "
                        f"--status {sweep.folder}")


def plan_shell(grid: str, overrides: list[str], profile: str = "") -> None:
    """Plan the sweep folder; print shell assignments that slurm/sweep.sh evaluates."""
    sweep, prof, pts = load(grid, overrides, profile)
    n_tasks = len(colocate.groups([p.name for p in pts], prof.runs_per_gpu))
    values = {"SWEEP_DIR": str(sweep.folder.resolve()), "N_TASKS": str(n_tasks),
              "PARALLEL": str(prof.array_parallelism or n_tasks), "DS_CONFIG": sweep.ds_config,
              "SWEEP_NAME": sweep.name, "TRAIN_SBATCH": " ".join(sbatch_args(prof, "train")),
              "EVAL_SBATCH": " ".join(sbatch_args(prof, "eval")), "EVAL_ARGS": " ".join(sweep.eval_args),
              "HALVING": "1" if sweep.search == "halving" else "0", "MAX_RETRIES": str(retries_of(sweep, prof))}
    for key, value in values.items():
        print(f"{key}={shlex.quote(value)}")
