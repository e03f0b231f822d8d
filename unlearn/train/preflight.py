"""Checks that need only the configs: they run first, so bad input fails in seconds, before data,
weights, distributed start-up or the run folder."""

from __future__ import annotations

from typing import Any

from unlearn import methods
from unlearn import model as models
from unlearn.config import Config
from unlearn.errors import UserError
from unlearn.train import engine as engines
from unlearn.train.phase_state import PHASE_STATES
from unlearn.train.schedule import JOINT

SCHEDULES = (JOINT, "alternate")


def check_config(cfg: Config, ds: dict[str, Any], world_size: int, *, resume: bool = False) -> None:
    models.validate(cfg.model, engines.zero_stage(ds))
    forget_obj = methods.forget_objective(cfg.method.forget_loss)
    retain_obj = methods.retain_objective(cfg.method.retain_loss)
    if forget_obj is None and retain_obj is None:
        raise UserError("method.forget_loss and method.retain_loss are both 'none'; expected at least one objective")
    if cfg.method.schedule not in SCHEDULES:
        raise UserError(f"method.schedule '{cfg.method.schedule}' is unknown; expected one of: {', '.join(SCHEDULES)}")
    if cfg.optim.phase_state not in PHASE_STATES:
        raise UserError(f"optim.phase_state '{cfg.optim.phase_state}' is unknown; expected one of: "
                        f"{', '.join(PHASE_STATES)}")
    engines.check_run_config(cfg, ds, world_size)
    if cfg.train.max_steps <= 0 and cfg.train.epochs <= 0:
        raise UserError(f"train.max_steps={cfg.train.max_steps}; expected a positive number of optimizer steps "
                        "(or train.epochs > 0)")
    if cfg.data.mismatch_pass_cost < 0:
        raise UserError(f"data.mismatch_pass_cost={cfg.data.mismatch_pass_cost}; expected >= 0 tokens per forward pass")
    if resume and not cfg.run.name:
        raise UserError("--resume needs run.name (the run to continue); expected run.name=<name> as in the first launch")
