"""TensorBoard and console logging (rank 0 only; other ranks get a writer that does nothing)."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from unlearn.distributed import DistEnv


class Window:
    """Means of per-step metrics between two log points.

    Alternating schedules put forget and retain terms on different steps; averaging each tag over
    the steps that have it means every term is logged whatever log_every_n_steps is. Values may be
    0-dim device tensors (the loop's losses): summed on the device, read in one go by `pop_means`.
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1

    def pop_means(self) -> dict[str, float]:
        import torch

        means = {k: self._sums[k] / self._counts[k] for k in self._sums}
        lazy = [k for k, v in means.items() if torch.is_tensor(v)]
        if lazy:  # one host wait for all of them
            means.update(zip(lazy, torch.stack([means[k].to(torch.float64) for k in lazy]).tolist()))
        self._sums.clear()
        self._counts.clear()
        return means


class Writer:
    def __init__(self, logdir: Path, env: DistEnv, purge_step: int | None = None):
        self.env = env
        self.tb = None
        if env.is_main:
            from torch.utils.tensorboard import SummaryWriter  # tensorboard: only on rank 0

            # purge_step drops events past a resume point, so curves do not double back
            self.tb = SummaryWriter(str(logdir), purge_step=purge_step)
        self._t0 = time.time()

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.tb is None:
            return
        for key, value in metrics.items():
            self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, step)

    def hparams(self, hparams: dict[str, Any], final: dict[str, float]) -> None:
        """HParams-tab summary (one per run) so a sweep's runs compare side by side."""
        if self.tb is None:
            return
        from torch.utils.tensorboard.summary import hparams as hp_summary

        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        finite = {k: v for k, v in final.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        exp, ssi, sei = hp_summary(clean, finite)
        writer = self.tb._get_file_writer()
        for s in (exp, ssi, sei):
            writer.add_summary(s)
        for k, v in finite.items():
            self.tb.add_scalar(k, v)
        self.tb.flush()

    def console(self, step: int, max_steps: int, metrics: dict[str, float]) -> None:
        if not self.env.is_main:
            return
        keys = [k for k in ("forget/loss", "forget/nll", "retain/loss", "retain/nll", "mismatch/loss",
                            "grad_norm", "lr", "tokens_per_s") if k in metrics]
        parts = " ".join(f"{k}={metrics[k]:.4g}" for k in keys)
        print(f"step {step:>6}/{max_steps} {parts} ({time.time() - self._t0:.0f}s)", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
