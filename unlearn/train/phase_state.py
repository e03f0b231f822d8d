"""Optimizer moments per phase (optim.phase_state): one AdamW state for forget and retain steps, or one each.

With the `alternate` schedule, forget (ascent) and retain (descent) steps take turns. Sharing one
AdamW state mixes them: with beta1 = 0.9, a retain step's first moment is still
0.9 / (1 + 0.9) = 47% the previous forget step's gradient, so neither phase follows its own
direction. `separate` keeps two states and swaps them in before each optimizer step: every moment
and bias-correction step count then belongs to one phase (the retain state sees only retain
gradients), at the memory of a second optimizer state.

The swap replaces the state dict of the optimizer that does the update (torch AdamW, bitsandbytes'
8-bit AdamW, DeepSpeed's CPU Adam) over ZeRO's flat fp32 partitions, so it works for every ZeRO
stage and offload. The inactive phase's state goes into each rank's checkpoint (`state_dict`), keyed
by the partitions' position, so resume is exact.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch

SHARED, SEPARATE = "shared", "separate"
PHASE_STATES = (SHARED, SEPARATE)


def inner_optimizer(engine) -> torch.optim.Optimizer:
    """The optimizer that holds the moments (ZeRO and bf16 wrappers keep it as `.optimizer`)."""
    opt = engine.optimizer
    return getattr(opt, "optimizer", opt)


def state_keys(engine) -> list[torch.Tensor]:
    """The tensors that key the inner optimizer's state, in a fixed order (the flat fp32 partitions
    under ZeRO; ZeRO-3 empties its param groups between steps, so they cannot be read from there)."""
    opt = engine.optimizer
    for attr in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups", "fp32_groups_flat_partition"):
        if hasattr(opt, attr):
            return list(getattr(opt, attr))
    return [p for group in inner_optimizer(engine).param_groups for p in group["params"]]


class PhaseStates:
    """Swaps the inner optimizer's state to the phase about to step (no-op when shared)."""

    def __init__(self, engine, separate: bool):
        self.separate = separate
        self.inner = inner_optimizer(engine) if separate else None
        self.keys = state_keys(engine) if separate else []
        self.active: str | None = None
        """Phase whose moments are in the optimizer now (None before the first step)."""
        self.stash: dict[str, dict] = {}
        """Phase -> its state dict while another phase is active."""

    def enter(self, phase: str) -> None:
        if not self.separate or phase == self.active:
            return
        if self.active is not None:
            self.stash[self.active] = self.inner.state
            self.inner.state = self.stash.pop(phase, defaultdict(dict))
        self.active = phase

    def state_dict(self) -> dict[str, Any]:
        """This rank's inactive moments, by partition position (the active ones are DeepSpeed's)."""
        if not self.separate:
            return {}
        return {"active": self.active,
                "stash": {phase: [state.get(key) for key in self.keys] for phase, state in self.stash.items()}}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if not self.separate:
            return
        self.active = saved.get("active")
        self.stash = {phase: defaultdict(dict, {key: s for key, s in zip(self.keys, entries) if s is not None})
                      for phase, entries in saved.get("stash", {}).items()}
