"""Checks that need only the configs: they run first, so bad input fails in seconds, before data,
weights, distributed start-up or the run folder."""

from __future__ import annotations

from typing import Any

from unlearn import methods
from unlearn import model as models
from unlearn.config import Config
from unlearn.errors import UserError
from unlearn.train import dual
from unlearn.train import engine as engines
from unlearn.train.phase_state import PHASE_STATES
from unlearn.train.schedule import JOINT

SCHEDULES = (JOINT, "alternate")


RANGES = [  # (key, lowest allowed, lowest is allowed, what is expected)
    ("optim.lr", 0.0, False, "a positive learning rate (e.g. 2e-6)"),
    ("optim.weight_decay", 0.0, True, ">= 0"),
    ("optim.eps", 0.0, False, "a small positive number (e.g. 1e-8)"),
    ("optim.warmup_steps", 0, True, ">= 0 optimizer steps"),
    ("optim.grad_clip", 0.0, True, ">= 0 (0 = no clipping)"),
    ("method.forget_weight", 0.0, True, ">= 0"),
    ("method.retain_weight", 0.0, True, ">= 0"),
    ("method.mismatch_weight", 0.0, True, ">= 0 (0 = off)"),
    ("method.beta", 0.0, False, "a positive inverse temperature"),
    ("method.simnpo_beta", 0.0, False, "a positive inverse temperature"),
    ("method.dpo_beta", 0.0, False, "a positive inverse temperature"),
    ("method.forget_steps_per_cycle", 1, True, ">= 1"),
    ("method.retain_steps_per_cycle", 1, True, ">= 1"),
    ("data.max_length", 1, True, ">= 1 tokens"),
    ("model.lora_r", 1, True, ">= 1"),
]
"""Numbers an optimizer or loss would reject later (with a traceback) or silently misuse."""


def check_ranges(cfg: Config) -> None:
    for key, low, inclusive, expected in RANGES:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < low or (value == low and not inclusive):
            raise UserError(f"{key}={value}; expected {expected}")
    if not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise UserError(f"optim.betas={list(cfg.optim.betas)}; expected two numbers in [0, 1), e.g. [0.9, 0.999]")


def check_config(cfg: Config, ds: dict[str, Any], world_size: int, *, resume: bool = False) -> None:
    check_ranges(cfg)
    models.validate(cfg.model, engines.zero_stage(ds))
    forget_obj = methods.forget_objective(cfg.method.forget_loss)
    retain_obj = methods.retain_objective(cfg.method.retain_loss)
    if forget_obj is None and retain_obj is None:
        raise UserError("method.forget_loss and method.retain_loss are both 'none'; expected at least one objective")
    dual.check(cfg.method)
    for key in ("undial_positions", "kl_positions"):
        if getattr(cfg.method, key) not in methods.POSITIONS:
            raise UserError(f"method.{key} '{getattr(cfg.method, key)}' is unknown; expected one of: "
                            f"{', '.join(methods.POSITIONS)}")
    if cfg.method.schedule not in SCHEDULES:
        raise UserError(f"method.schedule '{cfg.method.schedule}' is unknown; expected one of: {', '.join(SCHEDULES)}")
    if cfg.optim.phase_state not in PHASE_STATES:
        raise UserError(f"optim.phase_state '{cfg.optim.phase_state}' is unknown; expected one of: "
                        f"{', '.join(PHASE_STATES)}")
    engines.check_run_config(cfg, ds, world_size)
    engines.check_compile(cfg, ds)
    if cfg.train.max_steps <= 0 and cfg.train.epochs <= 0:
        raise UserError(f"train.max_steps={cfg.train.max_steps}; expected a positive number of optimizer steps "
                        "(or train.epochs > 0)")
    if cfg.data.mismatch_pass_cost < 0:
        raise UserError(f"data.mismatch_pass_cost={cfg.data.mismatch_pass_cost}; expected >= 0 tokens per forward pass")
    if resume and not cfg.run.name:
        raise UserError("--resume needs run.name (the run to continue); expected run.name=<name> as in the first launch")
