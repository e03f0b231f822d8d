"""Preemption: SIGUSR1/SIGTERM is only recorded in the handler; the loop saves at the next step
boundary on every rank (the flag is shared) and exits EXIT_REQUEUE, which the deepspeed launcher
passes on. The end-to-end resume after a signal is in test_resume.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, _free_port, child_env
from unlearn import runs
from unlearn.errors import EXIT_REQUEUE
from unlearn.train import guards


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_handler_records_the_signal_and_restores(sig):
    previous = signal.getsignal(sig)
    preempt = guards.Preemption()
    assert not preempt.requested
    os.kill(os.getpid(), sig)  # delivered to the main thread before kill() returns
    assert preempt.requested and preempt.signum == sig
    preempt.restore()
    assert signal.getsignal(sig) is previous


@pytest.mark.slow
@pytest.mark.multirank
def test_signal_to_one_rank_saves_on_all_ranks_and_exits_3(demo_dir, tmp_path):
    run = tmp_path / "runs" / "pre2"
    proc = _deepspeed_run(demo_dir, tmp_path, "pre2")
    try:
        rank1 = _rank_process(proc.pid, 1)
        _wait_for_training(run, proc)
        rank1.send_signal(signal.SIGUSR1)  # as if only this node got the warning
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_REQUEUE, out[-3000:]
    stopped = int(out.split("preempted at step ")[1].split(":")[0])
    assert 0 < stopped < 400
    ckpt = runs.step_dir(run, stopped)
    runs.require_complete(ckpt)
    assert {p.name for p in (ckpt / "engine").glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}
    assert runs.complete_checkpoints(run) == [ckpt]


@pytest.mark.slow
@pytest.mark.multirank
def test_term_to_the_deepspeed_command_stops_every_rank(demo_dir, tmp_path):
    """`kill -TERM <pid of deepspeed>`: DeepSpeed's runner dies of it at once (143); its agent and both
    ranks, reparented, notice at the next step boundary, save one checkpoint and exit; nothing of the
    command is left running (before: they trained on to the end as orphans)."""
    run = tmp_path / "runs" / "term"
    log = tmp_path / "term.log"  # a file, not a pipe: nobody drains a pipe while the test waits
    with log.open("w") as sink:
        proc = _deepspeed_run(demo_dir, tmp_path, "term", sink)
    try:
        _wait_for_training(run, proc)
        proc.send_signal(signal.SIGTERM)  # the runner only, not its process group
        assert proc.wait(timeout=30) == -signal.SIGTERM
        session = proc.pid  # start_new_session: the agent and ranks keep this session id
        deadline = time.time() + 240
        while left := [p for p in psutil.process_iter(["pid"]) if _session(p.pid) == session]:
            assert time.time() < deadline, f"still running after the command was killed: {left}"
            time.sleep(0.5)
    finally:
        _kill_session(proc.pid)
    out = log.read_text()
    stopped = int(out.split("preempted at step ")[1].split(":")[0])
    assert f"(the deepspeed command (pid {proc.pid}) is gone)" in out
    assert 0 < stopped < 400
    ckpt = runs.step_dir(run, stopped)
    runs.require_complete(ckpt)
    assert {p.name for p in (ckpt / "engine").glob("rng_rank*.pt")} == {"rng_rank0.pt", "rng_rank1.pt"}
    assert runs.complete_checkpoints(run) == [ckpt]


def _deepspeed_run(demo_dir: Path, tmp_path: Path, name: str, out=subprocess.PIPE) -> subprocess.Popen:
    """2 ranks under the real `deepspeed` command, in a session of their own, 400 steps, no periodic save."""
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(_free_port()),
           str(ROOT / "launch" / "unlearn.py"), "--ds_config", str(ROOT / "ds_configs" / "zero2.json"),
           "--no_report", f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'forget.txt'}",
           f"data.retain={demo_dir / 'retain.txt'}", "data.max_length=32", "train.micro_batch_size=2",
           "train.global_batch_size=4", "train.max_steps=400", "train.save_every_n_steps=0",
           f"run.output_dir={tmp_path / 'runs'}", f"run.name={name}", "train.log_every_n_steps=1"]
    env = child_env({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _session(pid: int) -> int:
    try:
        return os.getsid(pid)
    except OSError:  # gone meanwhile
        return -1


def _kill_session(session: int) -> None:
    """SIGKILL whatever of a test's command is left (its session: the runner's process group may be gone)."""
    for p in psutil.process_iter(["pid"]):
        if _session(p.pid) == session:
            try:
                p.kill()
            except psutil.Error:
                pass


def _rank_process(launcher_pid: int, rank: int, timeout: float = 120) -> psutil.Process:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for child in psutil.Process(launcher_pid).children(recursive=True):
            try:
                if f"--local_rank={rank}" in child.cmdline():
                    return child
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.1)
    raise AssertionError(f"rank {rank} did not start")


def _wait_for_training(run: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until rank 0 opened TensorBoard: both ranks are past start-up, their handlers installed."""
    deadline = time.time() + timeout
    while not any(p.stat().st_size for p in (run / "tb").glob("events.*")):
        assert proc.poll() is None, (proc.communicate()[0] or "see the log")[-3000:]
        assert time.time() < deadline, "training did not start"
        time.sleep(0.05)
