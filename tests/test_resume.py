"""Exact resume: a real run killed with SIGKILL (whole process group, deepspeed launcher) or stopped
by a preemption signal, then rerun with --resume, ends with the weights of an uninterrupted run
(fp32 on CPU: max abs difference <= 1e-6), and its TensorBoard curves hold each step once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, _free_port, child_env, dropout_model
from unlearn import runs
from unlearn.errors import EXIT_REQUEUE

pytestmark = pytest.mark.slow

STEPS = 16
SAVE_EVERY = 2
ENV = child_env({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})



def _args(demo: Path, out: Path, name: str) -> list[str]:
    # random tiny OPT with dropout on (the resumed run needs the restored RNG), short samples; NPO
    # forget steps and KL retain steps alternate
    return ["--ds_config", str(ROOT / "ds_configs" / "zero2.json"), "--no_report",
            f"model.name_or_path={out / 'dropout_init'}", "model.dropout=true", f"data.forget={demo / 'forget.txt'}",
            f"data.retain={demo / 'retain.txt'}", "data.max_length=32", "train.micro_batch_size=4",
            "train.global_batch_size=4", f"train.max_steps={STEPS}", f"train.save_every_n_steps={SAVE_EVERY}",
            "train.log_every_n_steps=1", "model.dropout=true", "optim.lr=1e-3", "optim.warmup_steps=3", "method.forget_loss=npo",
            "method.retain_loss=kl", f"run.output_dir={out}", f"run.name={name}"]


def _plain(args: list[str]) -> subprocess.Popen:
    """`python launch/unlearn.py` (a world of one, no launcher), in its own process group."""
    return subprocess.Popen([sys.executable, str(ROOT / "launch" / "unlearn.py"), *args], env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _deepspeed(args: list[str]) -> subprocess.Popen:
    """The real `deepspeed` launcher with one rank, in its own process group."""
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "1", "--master_port", str(_free_port()),
           str(ROOT / "launch" / "unlearn.py"), *args]
    return subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: int = 600) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def _weights(run: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    ckpt = runs.step_dir(run, step)
    runs.require_complete(ckpt)
    return load_file(str(ckpt / "model.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"run ended early:\n{_finish(proc)[1][-3000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def _steps_logged(run: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return [e.step for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def baseline(demo_dir, tmp_path_factory):
    """The uninterrupted run, started at once so it overlaps the first interrupted run."""
    out = tmp_path_factory.mktemp("resume")
    dropout_model(demo_dir, out / "dropout_init")
    proc = _plain(_args(demo_dir, out, "uninterrupted"))
    cache: dict[str, dict] = {}

    def weights() -> dict[str, torch.Tensor]:
        if "w" not in cache:
            code, log = _finish(proc)
            assert code == 0, log[-3000:]
            cache["w"] = _weights(out / "uninterrupted")
        return cache["w"]
    yield weights, out
    if proc.poll() is None:
        proc.kill()


def test_kill_9_mid_training_then_resume_matches_uninterrupted(demo_dir, baseline):
    weights, out = baseline
    run = out / "killed"
    args = _args(demo_dir, out, "killed")
    proc = _deepspeed(args)
    ckpts = run / "checkpoints"
    # after step 4 is saved, kill the whole group as soon as a later save is half-written (or 0.3 s on)
    _wait_for(lambda: (ckpts / "step-000004" / "COMPLETE").is_file(), proc)
    t0 = time.time()
    _wait_for(lambda: any(ckpts.glob(".step-*.tmp")) or time.time() - t0 > 0.3, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    done = runs.complete_checkpoints(run)
    assert done and done[-1].name < f"step-{STEPS:06d}", "the run finished before the kill"
    last_before = done[-1]

    code, log = _finish(_deepspeed([*args, "--resume"]))
    assert code == 0, log[-3000:]
    assert f"resumed from {last_before}" in log
    assert not list(ckpts.glob(".step-*")), "a partial save was left behind"
    diff = _max_diff(_weights(run), weights())
    assert diff <= 1e-6, f"resumed weights differ from the uninterrupted run by {diff}"
    # TensorBoard: events logged after the checkpoint and before the kill were purged on resume
    assert _steps_logged(run, "lr") == list(range(1, STEPS + 1))


def test_preemption_signal_saves_exits_3_and_resume_matches(demo_dir, baseline):
    weights, out = baseline
    run = out / "preempted"
    args = _args(demo_dir, out, "preempted")
    proc = _plain(args)
    _wait_for(lambda: (run / "checkpoints" / "step-000006" / "COMPLETE").is_file(), proc)
    os.kill(proc.pid, signal.SIGUSR1)
    code, log = _finish(proc)
    assert code == EXIT_REQUEUE, log[-3000:]
    stopped = int(log.split("preempted at step ")[1].split(":")[0])
    assert 6 <= stopped < STEPS
    assert runs.complete_checkpoints(run)[-1].name == f"step-{stopped:06d}"  # saved at the boundary

    code, log = _finish(_plain([*args, "--resume"]))
    assert code == 0, log[-3000:]
    assert f"at step {stopped}" in log
    diff = _max_diff(_weights(run), weights())
    assert diff <= 1e-6, f"resumed weights differ from the uninterrupted run by {diff}"
    assert _steps_logged(run, "lr") == list(range(1, STEPS + 1))
