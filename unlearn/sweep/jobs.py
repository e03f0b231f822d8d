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

ROOT = Path(__file__).resolve().parents[2]
"""The checkout: jobs run its launch/ scripts with it as the working directory."""


class TrainJob:
    """One grid point. Runs training as a child process so a preemption can stop it at a step boundary.

    Stops: submitit's preemption signal (USR2, also what a stop sent to the batch shell becomes:
    submit.TRAIN_SETUP) makes `checkpoint` ask the run to save and submitit requeue the job. A SIGTERM
    is passed on to the run (proctrack/cgroup signals only this process, the step's task); the run
    saves and exits 3, and without submitit's signal this job requeues itself. Other failures are
    retried up to `max_retries` times (unlearn.sweep.outcome decides, as for slurm/train-task.sh).
    """

    def __init__(self, sweep_dir: str, name: str, ds_config: str, max_retries: int = 2):
        self.sweep_dir, self.name, self.ds_config, self.max_retries = sweep_dir, name, ds_config, max_retries
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}  # a process does not pickle

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _proc=None)

    def __call__(self) -> str:
        import submitit  # only inside a submitit job

        from unlearn.errors import EXIT_REQUEUE
        from unlearn.runs import TRAIN_EXIT
        from unlearn.sweep import outcome, queue

        run_dir = Path(self.sweep_dir) / "runs" / self.name
        (run_dir / TRAIN_EXIT).unlink(missing_ok=True)  # running (again)
        watcher = None
        if _halving(Path(self.sweep_dir)) and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            import threading

            from unlearn.sweep import halving

            # evaluation while training: release this run's held eval jobs as its checkpoints appear
            watcher = threading.Thread(target=halving.watch, args=(self.sweep_dir, self.name), daemon=True)
            watcher.start()
        job = submitit.JobEnvironment()
        addr = _node_addr(job.hostnames[0]) if job.num_nodes > 1 else "127.0.0.1"
        env = {**os.environ, "RANK": str(job.global_rank), "LOCAL_RANK": str(job.local_rank),
               "WORLD_SIZE": str(job.num_tasks), "MASTER_ADDR": addr,
               "MASTER_PORT": str(_port(job.job_id))}
        cmd = [sys.executable, str(ROOT / "launch" / "unlearn.py"), "--ds_config", self.ds_config,
               "--config", str(Path(self.sweep_dir) / "configs" / f"{self.name}.yaml"), "--resume", "auto",
               "--no_report"]
        on_slurm = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        while True:
            rc, stopped = self._run(cmd, env)
            if job.global_rank and rc in (0, EXIT_REQUEUE):  # rank 0 speaks for a run that ended or saved;
                what = "done" if rc == 0 else "requeued"      # a crash, any rank that sees it (the others
                break                                         # may wait in a collective)
            retry = outcome.decide([rc], stopped, len(outcome.retries(run_dir)), self.max_retries) == "retry"
            what, rc = outcome.conclude(run_dir, [rc], stopped, self.max_retries, f"{job.job_id} restart {restart}",
                                        lambda: queue.requeue(job.job_id) if on_slurm else retry)
            if what != "requeued" or on_slurm:
                break
            restart += 1  # the local executor has no scheduler to requeue it: run it again here
        if what == "requeued":
            raise SystemExit(rc)  # no result: the job runs again (as submitit's own requeue exits)
        _halving_after_run(Path(self.sweep_dir), watcher)
        if rc:
            raise RuntimeError(f"run {self.name} failed: {outcome.reason(rc)}; "
                               f"{len(outcome.retries(run_dir))} of {self.max_retries} retries used")
        return self.name

    def _run(self, cmd: list[str], env: dict[str, str]) -> tuple[int, bool]:
        """(exit status, whether a SIGTERM came meanwhile) of one training process."""
        stops: list[int] = []

        def relay(signum, frame) -> None:
            stops.append(signum)
            if self._proc is not None and self._proc.poll() is None:
                self._proc.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, relay)  # instead of submitit's, which only logs it
        # SIG_IGN survives exec: submitit's preemption signal (USR2) is for this process, which then
        # asks the child to save with USR1 (see checkpoint).
        self._proc = subprocess.Popen(cmd, cwd=ROOT, env=env,
                                      preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN))
        rc = self._proc.wait()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})  # too late for submitit's requeue now
        signal.signal(signal.SIGTERM, previous)
        return (128 - rc if rc < 0 else rc), bool(stops)  # killed by signal N: 128 + N, as a shell says

    def checkpoint(self):
        """On preemption/timeout: let the run save at its next step, then resubmit (it resumes)."""
        import submitit

        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGUSR1)  # a no-op if SIGTERM already asked it to save
            # Wait for the exit without reaping: we run inside a signal handler that interrupted
            # proc.wait() in __call__, which holds Popen's waitpid lock (proc.wait() here would deadlock).
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        return submitit.helpers.DelayedSubmission(TrainJob(self.sweep_dir, self.name, self.ds_config,
                                                           self.max_retries))


class EvalJob:
    """`python launch/evaluate.py CHECKPOINT [args]` for one checkpoint. Requeued when preempted or out
    of time (`checkpoint`): a rerun skips the suites already in eval.json."""

    def __init__(self, ckpt: str, args: list[str]):
        self.ckpt, self.args = ckpt, list(args)  # not `checkpoint`: that name is submitit's requeue hook

    def __call__(self) -> str:
        from unlearn.runs import COMPLETE
        from unlearn.sweep import halving

        if not (Path(self.ckpt) / COMPLETE).is_file():  # afterany: the run is over and never completed it
            print(halving.skip_eval(self.ckpt) or f"skipped {self.ckpt}: the run never completed it", flush=True)
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


def _halving_after_run(sweep_dir: Path, watcher) -> None:
    """A run that is over (not requeued), in a search: halving sweep: let the watcher release the eval
    jobs still held (outcome.conclude wrote runs/NAME/train.exit), decide the rounds the run no longer
    holds up."""
    from unlearn.sweep import halving

    if _halving(sweep_dir):
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


def _port(job_id: str) -> int:
    """A rendezvous port per job, so tasks sharing a host do not collide (array ids look like 12_3)."""
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    return 20000 + int(digits) % 20000
