"""Hyperparameter sweeps through submitit (the same grid as `sbatch slurm/sweep.sh`).

    python launch/sweep.py configs/sweeps/X.yaml [--executor slurm|local] [--profile P.yaml]
                           [--wait] [key.sub=value | sweep.key=value ...]
    python launch/sweep.py --status SWEEP_DIR      # each run's state and newest eval metrics
    python launch/sweep.py --report SWEEP_DIR      # report.csv, report.png, HParams sessions

One job array (one task per grid point, `array_parallelism` at once); each task runs the distributed
run over its allocation and, when preempted or near its time limit, saves and requeues itself
(`TrainJob.checkpoint`). Each checkpoint's eval is its own job, `afterok` on its training task;
a report job runs after all evals.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without install

from unlearn.cli import guarded  # noqa: E402
from unlearn.errors import EXIT_REQUEUE  # noqa: E402


class TrainJob:
    """One grid point. Runs training as a child process so a preemption can stop it at a step boundary."""

    def __init__(self, sweep_dir: str, name: str, ds_config: str):
        self.sweep_dir, self.name, self.ds_config = sweep_dir, name, ds_config
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}  # a process does not pickle

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _proc=None)

    def __call__(self) -> str:
        import submitit  # only inside a submitit job

        job = submitit.JobEnvironment()
        addr = _node_addr(job.hostnames[0]) if job.num_nodes > 1 else "127.0.0.1"
        env = {**os.environ, "RANK": str(job.global_rank), "LOCAL_RANK": str(job.local_rank),
               "WORLD_SIZE": str(job.num_tasks), "MASTER_ADDR": addr,
               "MASTER_PORT": str(_port(job.job_id))}
        cmd = [sys.executable, str(ROOT / "launch" / "unlearn.py"), "--ds_config", self.ds_config,
               "--config", str(Path(self.sweep_dir) / "configs" / f"{self.name}.yaml"), "--resume", "--no_report"]
        # SIG_IGN survives exec: submitit's preemption signal (USR2) is for this process, which then
        # asks the child to save with USR1 (see checkpoint); SIGTERM reaches the child directly.
        self._proc = subprocess.Popen(cmd, cwd=ROOT, env=env,
                                      preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN))
        rc = self._proc.wait()
        if rc == EXIT_REQUEUE:
            raise RuntimeError(f"run {self.name} was preempted (saved, exit {rc}) without submitit's signal")
        if rc:
            raise RuntimeError(f"run {self.name} failed with exit status {rc}")
        return self.name

    def checkpoint(self):
        """On preemption/timeout: let the run save at its next step, then resubmit (it resumes)."""
        import submitit

        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGUSR1)  # a no-op if SIGTERM already asked it to save
            # Wait for the exit without reaping: we run inside a signal handler that interrupted
            # proc.wait() in __call__, which holds Popen's waitpid lock (proc.wait() here would deadlock).
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        return submitit.helpers.DelayedSubmission(TrainJob(self.sweep_dir, self.name, self.ds_config))


class EvalJob:
    """`python launch/evaluate.py CHECKPOINT [args]` for one checkpoint."""

    def __init__(self, checkpoint: str, args: list[str]):
        self.checkpoint, self.args = checkpoint, list(args)

    def __call__(self) -> str:
        cmd = [sys.executable, str(ROOT / "launch" / "evaluate.py"), self.checkpoint, *self.args]
        subprocess.run(cmd, cwd=ROOT, check=True)
        return self.checkpoint


class ReportJob:
    def __init__(self, sweep_dir: str):
        self.sweep_dir = sweep_dir

    def __call__(self) -> str:
        return str(report(self.sweep_dir))


def _node_addr(node: str) -> str:
    """A node name's address as SLURM knows it (names like n1 on a test cluster do not resolve)."""
    out = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True)
    for word in out.stdout.split():
        if word.startswith("NodeAddr="):
            return word.split("=", 1)[1]
    return node


def _port(job_id: str) -> int:
    """A rendezvous port per job, so tasks sharing a host do not collide (array ids look like 12_3)."""
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000


def _load(args: argparse.Namespace):
    """The sweep, its cluster profile, and its planned grid points (the sweep folder written)."""
    from unlearn.errors import UserError
    from unlearn.profile import load_profile
    from unlearn.sweep import load_sweep, plan

    sweep = load_sweep(args.grid, args.overrides)
    if not (ROOT / sweep.ds_config).is_file():  # jobs run in the checkout; fail here, not in every job
        raise UserError(f"ds_config '{sweep.ds_config}' not found in {ROOT}; expected a file such as "
                        "ds_configs/zero2.json")
    profile = load_profile(args.profile or sweep.profile)
    return sweep, profile, plan(sweep)


def report(sweep_dir: str) -> Path:
    from unlearn.sweep import open_sweep
    from unlearn.sweep_report import write_report

    sweep, pts = open_sweep(sweep_dir)
    csv_path, png = write_report(sweep, pts)
    print(f"wrote {csv_path}" + (f" and {png}" if png else " (no plot: report metrics not evaluated yet)"))
    return csv_path


def submit(args: argparse.Namespace) -> None:
    import submitit  # heavy-ish and only needed to submit

    from unlearn.profile import submitit_params
    from unlearn.sweep import checkpoint_steps

    sweep, profile, pts = _load(args)
    folder = str(sweep.folder.resolve())
    executor = submitit.AutoExecutor(folder=sweep.folder / "submitit" / "%j", cluster=args.executor)

    def configure(kind: str, dependency: str = "", name: str = "") -> None:
        params = submitit_params(profile, kind)
        if args.executor != "slurm":  # the local executor knows no SLURM options
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        elif dependency:
            params["slurm_additional_parameters"] = {"dependency": dependency}
        executor.update_parameters(name=name or f"{sweep.name}-{kind}", **params)

    configure("train")
    with executor.batch():  # one job array
        train_jobs = [executor.submit(TrainJob(folder, p.name, sweep.ds_config)) for p in pts]
    if args.executor == "local":  # no dependencies locally: wait for each run before its evals
        for job in train_jobs:
            job.result()
    eval_jobs = []
    for p, tj in zip(pts, train_jobs):
        for step in checkpoint_steps(p.config) if sweep.eval_enabled else []:
            configure("eval", f"afterok:{tj.job_id}", f"eval-{p.name}-{step}")
            ckpt = str(sweep.folder.resolve() / "runs" / p.name / "checkpoints" / f"step-{step:06d}")
            eval_jobs.append(executor.submit(EvalJob(ckpt, list(sweep.eval_args))))
    if args.executor == "local":
        for job in eval_jobs:
            job.result()
        report(folder)
        return
    after = eval_jobs or train_jobs  # the report waits for every eval (or every run without evals)
    configure("eval", "afterany:" + ":".join(j.job_id for j in after), f"{sweep.name}-report")
    report_job = executor.submit(ReportJob(folder))
    ids = {"train": [j.job_id for j in train_jobs], "eval": [j.job_id for j in eval_jobs],
           "report": [report_job.job_id]}
    (sweep.folder / "submitit_jobs.txt").write_text("".join(f"{k} {' '.join(v)}\n" for k, v in ids.items()))
    print(f"sweep {sweep.folder}: {len(train_jobs)} runs, {len(eval_jobs)} eval jobs, report job "
          f"{report_job.job_id}", flush=True)
    if args.wait:
        for job in [*train_jobs, *eval_jobs, report_job]:
            job.result()  # raises if a job failed
        print(f"sweep {sweep.folder} finished", flush=True)


def plan_shell(args: argparse.Namespace) -> None:
    """Plan the sweep folder; print shell assignments that slurm/sweep.sh evaluates."""
    import shlex

    from unlearn.profile import sbatch_args

    sweep, profile, pts = _load(args)
    values = {"SWEEP_DIR": str(sweep.folder.resolve()), "N_TASKS": str(len(pts)),
              "PARALLEL": str(profile.array_parallelism or len(pts)), "DS_CONFIG": sweep.ds_config,
              "SWEEP_NAME": sweep.name, "TRAIN_SBATCH": " ".join(sbatch_args(profile, "train")),
              "EVAL_SBATCH": " ".join(sbatch_args(profile, "eval")), "EVAL_ARGS": " ".join(sweep.eval_args)}
    for key, value in values.items():
        print(f"{key}={shlex.quote(value)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", nargs="?", help="sweep YAML (configs/sweeps/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="patch the base run config; sweep.key=value sets a sweep key (sweep.output_dir=...)")
    parser.add_argument("--executor", choices=["slurm", "local"], default="slurm")
    parser.add_argument("--profile", default="", help="cluster profile YAML (default: the sweep's `profile:`)")
    parser.add_argument("--wait", action="store_true", help="wait for every job; fail if one failed")
    parser.add_argument("--plan-shell", action="store_true", help=argparse.SUPPRESS)  # for slurm/sweep.sh
    parser.add_argument("--status", metavar="SWEEP_DIR", help="print each run's state and newest eval metrics")
    parser.add_argument("--report", metavar="SWEEP_DIR", help="write report.csv/png and HParams sessions")
    args = parser.parse_intermixed_args(argv)

    def job() -> None:
        if args.status:
            from unlearn.sweep import open_sweep
            from unlearn.sweep_report import status_table

            print(status_table(*open_sweep(args.status)))
        elif args.report:
            report(args.report)
        elif args.grid and args.plan_shell:
            plan_shell(args)
        elif args.grid:
            submit(args)
        else:
            parser.error("give a sweep YAML, --status SWEEP_DIR or --report SWEEP_DIR")

    guarded(job)


if __name__ == "__main__":
    main()
