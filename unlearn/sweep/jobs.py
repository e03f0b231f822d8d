"""The submitit job classes of a sweep: one per array task (train: one grid point, or K with runs_per_gpu:
K), one per checkpoint (eval), one report.

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
    """One grid point, or several sharing the allocation's GPU (cluster profile runs_per_gpu: `name` is
    then their list, each trained as a single-rank process at once; unlearn.sweep.colocate). Runs
    training as child processes so a preemption can stop them at a step boundary.

    Stops: submitit's preemption signal (USR2, also what a stop sent to the batch shell becomes:
    submit.STOP_SETUP) makes `checkpoint` ask every run to save and submitit requeue the job. A SIGTERM
    is passed on to every run (proctrack/cgroup signals only this process, the step's task); they save
    and exit 3, and without submitit's signal this job requeues itself. Other failures are retried up
    to `max_retries` times per run. unlearn.sweep.outcome decides for each run, as for
    slurm/train-task.sh; the job is requeued once if any run needs it, and trains only those again.
    """

    def __init__(self, sweep_dir: str, name: str | list[str], ds_config: str, max_retries: int = 2):
        self.sweep_dir, self.name, self.ds_config, self.max_retries = sweep_dir, name, ds_config, max_retries
        self._procs: dict[str, subprocess.Popen] = {}
        self._job = ""  # this incarnation, as outcome names it: "12_3 restart 1"

    @property
    def names(self) -> list[str]:
        return [self.name] if isinstance(self.name, str) else list(self.name)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_procs"}  # a process does not pickle

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _procs={})

    def __call__(self) -> str:
        import submitit  # only inside a submitit job

        from unlearn.errors import EXIT_REQUEUE
        from unlearn.sweep import outcome, queue

        sweep = Path(self.sweep_dir)
        watcher = None
        if _halving(sweep) and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            import threading

            from unlearn.sweep import halving

            # evaluation while training: release this run's held eval jobs as its checkpoints appear
            watcher = threading.Thread(target=halving.watch, args=(self.sweep_dir, self.name), daemon=True)
            watcher.start()
        job = submitit.JobEnvironment()
        on_slurm = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"
        restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        while True:
            self._job = f"{job.job_id} restart {restart}"
            names = outcome.requeued_runs(sweep, job.job_id) or self.names  # the others ended for good
            codes, stopped = self._run(names, job)
            if job.global_rank and all(rc in (0, EXIT_REQUEUE) for rc in codes.values()):
                # rank 0 speaks for a run that ended or saved; a crash, any rank that sees it (the
                # others may wait in a collective)
                ends = {name: ("requeued" if rc else "done", rc) for name, rc in codes.items()}
                break
            ends = outcome.conclude_runs(sweep, {name: [rc] for name, rc in codes.items()}, stopped,
                                         self.max_retries, self._job,
                                         lambda kinds: queue.requeue(job.job_id) if on_slurm else kinds == {"retry"})
            if outcome.verdict(ends) != "requeued" or on_slurm:
                break
            restart += 1  # the local executor has no scheduler to requeue it: run them again here
        if outcome.verdict(ends) == "requeued":
            raise SystemExit(max(rc for _, rc in ends.values()))  # no result: the job runs again
        _halving_after_run(sweep, watcher)
        failed = [f"run {name} failed: {outcome.reason(rc)}; {len(outcome.retries(sweep / 'runs' / name))} of "
                  f"{self.max_retries} retries used" for name, (what, rc) in ends.items() if what == "failed"]
        if failed:
            raise RuntimeError("; ".join(failed))
        return self.name if isinstance(self.name, str) else " ".join(self.names)

    def _run(self, names: list[str], job) -> tuple[dict[str, int], bool]:
        """({run: exit status}, whether a SIGTERM came meanwhile) of the training processes of `names`:
        one rank of a distributed run over the allocation, or K single-rank runs on this host."""
        from unlearn.runs import TRAIN_EXIT

        if len(self.names) == 1:
            addr = _node_addr(job.hostnames[0]) if job.num_nodes > 1 else "127.0.0.1"
            port = rendezvous_port(Path(self.sweep_dir) / "logs" / f".port-{self._job.replace(' ', '-')}",
                                   job.global_rank, job.num_tasks)
            ranks = [{"RANK": str(job.global_rank), "LOCAL_RANK": str(job.local_rank),
                      "WORLD_SIZE": str(job.num_tasks), "MASTER_ADDR": addr, "MASTER_PORT": str(port)}]
        else:  # a free rendezvous port each
            ranks = [{"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                      "MASTER_PORT": str(port)} for port in free_ports(len(names))]
        stops: list[int] = []

        def relay(signum, frame) -> None:
            stops.append(signum)
            for proc in self._procs.values():
                if proc.poll() is None:
                    proc.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, relay)  # instead of submitit's, which only logs it
        self._procs = {}
        for name, rank_env in zip(names, ranks):
            (Path(self.sweep_dir) / "runs" / name / TRAIN_EXIT).unlink(missing_ok=True)  # running (again)
            cmd = [sys.executable, str(ROOT / "launch" / "unlearn.py"), "--ds_config", self.ds_config,
                   "--config", str(Path(self.sweep_dir) / "configs" / f"{name}.yaml"), "--resume", "auto",
                   "--no_report"]
            # SIG_IGN survives exec: submitit's preemption signal (USR2) is for this process, which then
            # asks the children to save with USR1 (see checkpoint).
            self._procs[name] = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **rank_env},
                                                 preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN))
        codes = {name: proc.wait() for name, proc in self._procs.items()}
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})  # too late for submitit's requeue now
        signal.signal(signal.SIGTERM, previous)
        return {name: _shell_status(rc) for name, rc in codes.items()}, bool(stops)

    def checkpoint(self):
        """On preemption/timeout: let every run save at its next step, then resubmit (they resume). Runs
        that ended for good before are recorded so (the next incarnation leaves them out)."""
        import submitit

        from unlearn.sweep import outcome

        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGUSR1)  # a no-op if SIGTERM already asked it to save
        codes = {name: _exit_status(proc) for name, proc in self._procs.items()}
        if len(self.names) > 1 and codes:
            ends = outcome.conclude_runs(Path(self.sweep_dir), {name: [rc] for name, rc in codes.items()}, True,
                                         self.max_retries, self._job, lambda kinds: True)
            if outcome.verdict(ends) != "requeued":
                return None  # every run ended for good meanwhile: nothing to requeue (submitit ends the job)
        return submitit.helpers.DelayedSubmission(TrainJob(self.sweep_dir, self.name, self.ds_config,
                                                           self.max_retries))


def _shell_status(rc: int) -> int:
    return 128 - rc if rc < 0 else rc  # Popen's -N for killed by signal N -> 128 + N, as a shell says


def _exit_status(proc: subprocess.Popen) -> int:
    """A child's exit status once it ended, without reaping it: we run inside a signal handler that
    interrupted proc.wait() in __call__, which holds Popen's waitpid lock (proc.wait() would deadlock)."""
    if proc.returncode is not None:
        return _shell_status(proc.returncode)
    info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    return info.si_status if info.si_code == os.CLD_EXITED else 128 + info.si_status


class EvalJob:
    """`python launch/evaluate.py CHECKPOINT [args]` for one checkpoint; a rerun does only the suites not
    yet in eval.json. Stops, as for TrainJob: submitit's preemption signal (USR2, also what a stop sent
    to the batch shell becomes: submit.STOP_SETUP) makes `checkpoint` stop the evaluation (SIGUSR1: the
    finished suites stay in eval.json) and submitit requeue the job. A SIGTERM to the job's steps is
    passed on to evaluate.py, which stops the same way (exit 3); this job then requeues itself, up to
    `max_retries` times (unlearn.sweep.outcome.conclude_eval), after which eval.error says it gave up."""

    def __init__(self, ckpt: str, args: list[str], max_retries: int = 2):
        self.ckpt, self.args, self.max_retries = ckpt, list(args), max_retries  # `checkpoint`: submitit's hook
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}  # a process does not pickle

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _proc=None)

    def __call__(self) -> str:
        from unlearn.runs import COMPLETE
        from unlearn.sweep import halving, outcome, queue

        if not (Path(self.ckpt) / COMPLETE).is_file():  # afterany: the run is over and never completed it
            print(halving.skip_eval(self.ckpt) or f"skipped {self.ckpt}: the run never completed it", flush=True)
            return self.ckpt
        cmd = [sys.executable, str(ROOT / "launch" / "evaluate.py"), self.ckpt, *self.args]
        # SIG_IGN survives exec: submitit's preemption signal is for this process (see checkpoint)
        self._proc = subprocess.Popen(cmd, cwd=ROOT, preexec_fn=lambda: signal.signal(signal.SIGUSR2, signal.SIG_IGN))
        # a SIGTERM to the job's steps reaches this process, the step's task, and under proctrack/cgroup
        # not its child: pass it on (instead of submitit's handler, which only logs it); evaluate.py
        # stops at the first and ignores a second that linuxproc also delivers
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._proc.send_signal(signum))
        try:
            rc = _shell_status(self._proc.wait())
        finally:
            signal.signal(signal.SIGTERM, previous)
        if rc and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            import submitit

            job = submitit.JobEnvironment().job_id
            restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
            if outcome.conclude_eval(Path(self.ckpt), rc, False, restarts, self.max_retries, job,
                                     lambda: queue.requeue(job)) == "requeued":
                raise SystemExit(rc)  # no result: the job runs again
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
        """On preemption/timeout: stop the evaluation (it keeps what finished), then resubmit."""
        import submitit

        if self._proc is not None and self._proc.returncode is None:
            self._proc.send_signal(signal.SIGUSR1)
            _exit_status(self._proc)  # wait until it has written what finished (not reaped: see _exit_status)
        return submitit.helpers.DelayedSubmission(EvalJob(self.ckpt, self.args, self.max_retries))


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


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on every interface of this host (all bound at once, then released):
    the rendezvous ports of a task's runs. slurm/train-task.sh asks here too."""
    import socket

    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def rendezvous_port(file: Path, rank: int, ranks: int, timeout: float = 300.0) -> int:
    """The port where a run's ranks meet: one free on rank 0's host, chosen there and passed to the
    other ranks through `file` (on the sweep's shared folder; one per job incarnation).

    A port derived from the job id (as before) collided with whatever held it: in an ephemeral range
    any outgoing connection may, and the run then failed for good (a port in use is a user error)."""
    import time

    if ranks == 1:
        return free_ports(1)[0]
    if rank == 0:
        port = free_ports(1)[0]
        tmp = file.with_name(file.name + ".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(file)  # whole or absent: a rank never reads half a number
        return port
    end = time.time() + timeout
    while not file.is_file():
        if time.time() > end:
            raise RuntimeError(f"rank {rank}: rank 0 named no rendezvous port in {file} within {timeout:.0f} s")
        time.sleep(0.2)
    return int(file.read_text())
