"""Guards around the optimizer step: non-finite losses or gradients never reach the weights, and a
preemption signal becomes a checkpoint at the next step boundary.

How a step is skipped in a DeepSpeed engine: under ZeRO 1-3 the optimizer's `step()` discards the
whole optimizer step (all micro-batches accumulated since the last one) when the global gradient
norm is inf/NaN, in fp32 and in bf16 (`bf16.check_grad_overflow`, on by default); the engine then
counts it in `skipped_steps`, leaves the LR schedule where it was, and `was_step_applied()` is
False. So a non-finite loss is not left out of the backward, which would put DeepSpeed's micro-step
counter out of step with ours: it is turned into NaN gradients on purpose (`poison`) and DeepSpeed
throws the step away. ZeRO stage 0 has no such check, so engine.read_ds_config requires stage 1-3.
The loss is checked and poisoned on the device (`finite`, `poison_unless`): the host does not wait
for it, and DeepSpeed's check is global (an all-reduced norm or flag), so one rank's NaN gradients
skip the step on every rank.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import torch

from unlearn.distributed import DistEnv, host_group

PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
"""What SLURM sends before a time limit (--signal=USR1@T) or a preemption (SIGTERM, then SIGKILL)."""


class Preemption:
    """Records a stop: a preemption signal, or the `deepspeed` command above this rank gone. The loop
    saves at the next step boundary and exits EXIT_REQUEUE.

    The flag is shared over ranks, so a stop that reaches one rank stops all of them at the same
    step, and the deepspeed launcher then exits 3 as well. A SIGTERM to the launcher's whole process
    group (Ctrl-C, SLURM signalling a step) reaches the ranks directly. A SIGTERM to the `deepspeed`
    command alone does not: DeepSpeed's runner (deepspeed/launcher/runner.py) has no handler on one
    node and dies of it (status 143) while its per-node agent and the ranks would train on, orphaned;
    `Launcher` notices that at the next step boundary and stops the run as if the signal had come.
    """

    def __init__(self):
        self.signum = 0
        self.reason = ""
        self._launcher = Launcher.above(os.getpid())
        self._previous = {sig: signal.signal(sig, self._handle) for sig in PREEMPTION_SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.signum = signum  # only a flag: saving inside a signal handler could interrupt a collective

    @property
    def requested(self) -> bool:
        if self.signum:
            self.reason = self.reason or signal.Signals(self.signum).name
        elif self._launcher is not None and not self._launcher.alive():
            self.reason = self.reason or f"the deepspeed command (pid {self._launcher.runner_pid}) is gone"
        return bool(self.reason)

    def restore(self) -> None:
        """Put back the handlers that were there before (in-process callers, tests)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Launcher:
    """The `deepspeed` command above a rank: its runner process, and the per-node agent
    (deepspeed.launcher.launch) between them, which is the rank's parent."""

    AGENT = "deepspeed.launcher.launch"

    def __init__(self, agent, runner_pid: int):
        self.agent, self.runner_pid = agent, runner_pid

    @classmethod
    def above(cls, pid: int) -> Launcher | None:
        """The launcher of process `pid`; None when its parent is not DeepSpeed's agent (srun, torchrun,
        a plain `python launch/unlearn.py`, tests)."""
        import psutil  # DeepSpeed's own dependency

        try:
            agent = psutil.Process(pid).parent()
            if agent is None or not any(cls.AGENT in word for word in agent.cmdline()):
                return None
            return cls(agent, agent.ppid())
        except psutil.Error:
            return None

    def alive(self) -> bool:
        """Whether the agent still runs under the same runner (one /proc read per call)."""
        import psutil

        try:
            return self.agent.is_running() and self.agent.ppid() == self.runner_pid
        except psutil.Error:
            return False


def on_any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank if `flag` is True on at least one (one all-reduce)."""
    return not all_ranks(not flag, env)


def all_ranks(flag: bool, env: DistEnv) -> bool:
    """True on every rank if `flag` is True on all of them (one all-reduce of a host tensor over the
    host group: no device sync, see unlearn.distributed.host_group)."""
    if env.world_size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN, group=host_group())
    return bool(t.item() > 0)


def finite(loss: torch.Tensor) -> torch.Tensor:
    """Whether the loss is finite: a bool tensor on its device (nothing waits for it)."""
    return torch.isfinite(loss.detach()).all()


def poison(loss: torch.Tensor) -> torch.Tensor:
    """The loss times NaN: every gradient it reaches is NaN (0 * NaN is NaN), so ZeRO skips the step."""
    return loss * float("nan")


def poison_unless(finite: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """`loss` where the bool tensor `finite` holds, else `poison(loss)`, decided on the device. Times
    exactly 1.0 otherwise: the loss and every gradient stay bit-equal."""
    return loss * torch.where(finite, 1.0, float("nan"))


def divergence(in_row: int, limit: int, step: int, run_dir) -> str:
    """Why the run must stop after `in_row` skipped steps in a row ("" = go on; limit 0 = never)."""
    if not limit or in_row < limit:
        return ""
    good = last_good(run_dir)
    return (f"training diverged: {in_row} non-finite steps in a row up to step {step} "
            f"(train.max_nonfinite_steps={limit}); last good checkpoint: {good or 'none'}; "
            "expected finite losses (lower optim.lr or check the data)")


def last_good(run_dir) -> Path | None:
    """The newest complete checkpoint saved outside a run of non-finite steps (its meta.json's
    nonfinite_in_row is 0) whose weights are all finite (weights_finite, checked at save)."""
    import json

    from unlearn.runs import complete_checkpoints

    for ckpt in reversed(complete_checkpoints(run_dir)):
        try:
            meta = json.loads((ckpt / "meta.json").read_text())
        except (OSError, ValueError):  # damaged: not one to name as good
            continue
        if meta.get("nonfinite_in_row", 0) == 0 and meta.get("weights_finite", True):
            return ckpt
    return None


def forget_ceiling(metrics: dict[str, float], ceiling: float) -> str:
    """Why the run stops early on method.max_forget_loss ("" = go on); NaN never triggers it."""
    nll = metrics.get("forget/nll", -math.inf)
    if ceiling > 0 and nll > ceiling:
        return f"forget NLL {nll:.3f} exceeded method.max_forget_loss={ceiling}"
    return ""


def stop_file(run_dir, env: DistEnv) -> str:
    """Why the run stops at this step boundary ("" = go on): RUN_DIR/STOP exists on some rank (one
    all-reduce, so every rank stops at the same step); its text is the reason. The loop then saves
    a final checkpoint and ends normally (successive halving in sweeps writes it)."""
    from unlearn.runs import STOP

    path = Path(run_dir) / STOP
    if not on_any_rank(path.is_file(), env):
        return ""
    try:
        reason = " ".join(path.read_text().split())
    except OSError:  # seen by another rank only
        reason = ""
    return f"{path}: {reason or 'stop requested'}"
