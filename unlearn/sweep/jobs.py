"""The submitit job classes of a sweep: one per grid point (train), per checkpoint (eval), one report.

Each runs a launch/ script as a child process in the checkout, so a job sees exactly what a user's
command line would. `TrainJob.checkpoint` is submitit's requeue hook: on preemption or near the time
limit it lets the run save at its next step boundary, then resubmits it (the run resumes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from unlearn.errors import EXIT_REQUEUE

ROOT = Path(__file__).resolve().parents[2]
"""The checkout: jobs run its launch/ scripts with it as the working directory."""


class TrainJob:
    """One grid point, or several sharing the allocation's GPU (cluster profile runs_per_gpu: `name`
    is then their list, each trained as a single-rank process at once; unlearn.sweep.colocate).
    Runs training as child processes so a preemption can stop them at a step boundary."""

    def __init__(self, sweep_dir: str, name: str | list[str], ds_config: str):
        self.sweep_dir, self.name, self.ds_config = sweep_dir, name, ds_config
        self._procs: list[subprocess.Popen] = []

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_procs"}  # a process does not pickle

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _procs=[])

    def __call__(self) -> str:
        import submitit  # only inside a submitit job

        from unlearn.runs import TRAIN_EXIT

        names = [self.name] if isinstance(self.name, str) else list(self.name)
        for name in names:
            (Path(self.sweep_dir) / "runs" / name / TRAIN_EXIT).unlink(missing_ok=True)  # running (again)
        watcher = None
        if _halving(Path(self.sweep_dir)) and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            import threading

            from unlearn.sweep import halving

            # evaluation while training: release this run's held eval jobs as its checkpoints appear
            watcher = threading.Thread(target=halving.watch, args=(self.sweep_dir, self.name), daemon=True)
            watcher.start()
        job = submitit.JobEnvironment()
        if len(names) == 1:  # one distributed run over the allocation
            addr = _node_addr(job.hostnames[0]) if job.num_nodes > 1 else "127.0.0.1"
            ranks = [{"RANK": str(job.global_rank), "LOCAL_RANK": str(job.local_rank),
                      "WORLD_SIZE": str(job.num_tasks), "MASTER_ADDR": addr, "MASTER_PORT": str(_port(job.job_id))}]
        else:  # K single-rank runs on this host, a free rendezvous port each
            ranks = [{"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                      "MASTER_PORT": str(_free_port())} for _ in names]
        for name, rank_env in zip(names, ranks):
            cmd = [sys.executable, str(ROOT / "launch" / "unlearn.py"), "--ds_config", self.ds_config,
                   "--config", str(Path(self.sweep_dir) / "configs" / f"{name}.yaml"), "--resume", "auto",
                   "--no_report"]
            # SIG_IGN survives exec: submitit's preemption signal (USR2) is for this process, which then
            # asks the children to save with USR1 (see checkpoint); SIGTERM reaches them directly.
            self._procs.append(subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **rank_env},
                                                preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN)))
        codes = [proc.wait() for proc in self._procs]
        if len(names) == 1 and codes[0] != EXIT_REQUEUE:
            _halving_after_run(Path(self.sweep_dir), self.name, codes[0], watcher)
        if EXIT_REQUEUE in codes:
            raise RuntimeError(f"run(s) {', '.join(names)} were preempted (saved, exit {EXIT_REQUEUE}) without "
                               "submitit's signal")
        failed = [f"{n} (exit {rc})" for n, rc in zip(names, codes) if rc]
        if failed:
            raise RuntimeError(f"run {', '.join(failed)} failed")
        return self.name if isinstance(self.name, str) else " ".join(names)

    def checkpoint(self):
        """On preemption/timeout: let the runs save at their next step, then resubmit (they resume)."""
        import submitit

        for proc in self._procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGUSR1)  # a no-op if SIGTERM already asked it to save
        for proc in self._procs:
            if proc.returncode is None:
                # Wait for the exit without reaping: we run inside a signal handler that interrupted
                # proc.wait() in __call__, which holds Popen's waitpid lock (proc.wait() would deadlock).
                os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        return submitit.helpers.DelayedSubmission(TrainJob(self.sweep_dir, self.name, self.ds_config))


class EvalJob:
    """`python launch/evaluate.py CHECKPOINT [args]` for one checkpoint. Requeued when preempted or out
    of time (`checkpoint`): a rerun skips the suites already in eval.json."""

    def __init__(self, ckpt: str, args: list[str]):
        self.ckpt, self.args = ckpt, list(args)  # not `checkpoint`: that name is submitit's requeue hook

    def __call__(self) -> str:
        from unlearn.sweep import halving

        why = halving.skip_eval(self.ckpt)  # halving stopped the run before this checkpoint
        if why:
            print(why, flush=True)
            return self.ckpt
        cmd = [sys.executable, str(ROOT / "launch" / "evaluate.py"), self.ckpt, *self.args]
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        sweep = halving.sweep_of(self.ckpt)
        if sweep is not None:
            halving.decide(sweep)  # search: halving: the rounds this result completes (no-op otherwise)
        if rc:
            error = Path(self.ckpt) / "eval.error"  # written by the evaluation itself when it could
            if not error.is_file():
                error.write_text(f"evaluate.py exited with status {rc} (see the job's log)\n")
            raise RuntimeError(f"eval of {self.ckpt} failed: {error.read_text().strip()}")
        return self.ckpt

    def checkpoint(self):
        import submitit

        return submitit.helpers.DelayedSubmission(EvalJob(self.ckpt, self.args))


class ReportJob:
    def __init__(self, sweep_dir: str):
        self.sweep_dir = sweep_dir

    def __call__(self) -> str:
        from unlearn.sweep.report import report_folder

        return str(report_folder(self.sweep_dir))


def _halving(sweep_dir: Path) -> bool:
    return "search: halving" in (sweep_dir / "sweep.yaml").read_text().splitlines()


def _halving_after_run(sweep_dir: Path, name: str, rc: int, watcher) -> None:
    """A run that is over (not requeued), in a search: halving sweep: record its exit status
    (runs/NAME/train.exit), let the watcher release the eval jobs still held, decide the rounds
    the run no longer holds up."""
    from unlearn.runs import TRAIN_EXIT
    from unlearn.sweep import halving

    if _halving(sweep_dir):
        (sweep_dir / "runs" / name).mkdir(parents=True, exist_ok=True)
        (sweep_dir / "runs" / name / TRAIN_EXIT).write_text(f"{rc}\n")
        if watcher is not None:
            watcher.join()
        halving.decide(sweep_dir)


def _node_addr(node: str) -> str:
    """A node name's address as SLURM knows it (names like n1 on a test cluster do not resolve)."""
    out = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True)
    for word in out.stdout.split():
        if word.startswith("NodeAddr="):
            return word.split("=", 1)[1]
    return node


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port(job_id: str) -> int:
    """A rendezvous port per job, so tasks sharing a host do not collide (array ids look like 12_3)."""
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000
