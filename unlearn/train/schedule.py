"""Which phase each optimizer step runs."""

from __future__ import annotations

from unlearn.config import MethodConfig

FORGET, RETAIN, JOINT = "forget", "retain", "joint"


def phase_at(step: int, m: MethodConfig) -> str:
    """Phase of optimizer step `step` (0-based).

    joint: every step is the weighted sum of all terms. alternate: `forget_steps_per_cycle`
    forget steps, then `retain_steps_per_cycle` retain steps, repeated; a method with only one
    side (fine-tuning: forget_loss=none) runs that side every step.
    """
    if m.schedule == JOINT:
        return JOINT
    has_forget = m.forget_loss != "none" or m.mismatch_weight > 0
    has_retain = m.retain_loss != "none"
    if not has_forget:
        return RETAIN
    if not has_retain:
        return FORGET
    cycle = m.forget_steps_per_cycle + m.retain_steps_per_cycle
    return FORGET if step % cycle < m.forget_steps_per_cycle else RETAIN
