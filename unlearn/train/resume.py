"""Exact resume: what a checkpoint stores besides the DeepSpeed engine (the step, the guard
counters, each data stream's position) and restoring all of it from a run's newest checkpoint.

The engine state (weights, optimizer, LR schedule) and every rank's RNG come back through
`checkpoint.load_for_resume`; with the same world size the continued run then computes exactly what
the uninterrupted one would have.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn import data, rmu, runs
from unlearn.config import Config
from unlearn.distributed import DistEnv
from unlearn.train import checkpoint
from unlearn.train.phase_state import PhaseStates


@dataclass
class State:
    step: int = 0
    """Optimizer steps done, skipped ones included."""
    streams: dict[str, data.BatchStream] = field(default_factory=dict)
    nonfinite_in_row: int = 0
    """Consecutive steps skipped for a non-finite loss or gradient."""
    skipped_steps: int = 0
    """Steps skipped in the whole run."""
    stop_reason: str = ""
    dual: dict[str, float] = field(default_factory=dict)
    """Dual variables by name (PDU's retain weight lambda: unlearn.train.dual); empty for other methods."""

    def client_state(self) -> dict[str, Any]:
        """JSON-able; stored with the engine state and in meta.json."""
        return {"step": self.step, "skipped_steps": self.skipped_steps, "nonfinite_in_row": self.nonfinite_in_row,
                "stop_reason": self.stop_reason, "streams": {k: s.next_batch for k, s in self.streams.items()},
                "dual": dict(self.dual)}

    def record_step(self, skipped: bool) -> None:
        self.step += 1
        self.nonfinite_in_row = self.nonfinite_in_row + 1 if skipped else 0
        self.skipped_steps += int(skipped)

    def restore(self, client: dict[str, Any]) -> None:
        self.step = client["step"]
        self.skipped_steps = client.get("skipped_steps", 0)
        self.nonfinite_in_row = client.get("nonfinite_in_row", 0)
        self.dual = dict(client.get("dual", {}))
        for name, pos in client["streams"].items():
            self.streams[name].next_batch = pos


def resume_from_last(state: State, engine, cfg: Config, run_dir: Path, env: DistEnv,
                     phases: PhaseStates | None = None, steering: rmu.Steering | None = None) -> int:
    """Restore engine, RNG, `state`, the per-phase optimizer moments and RMU's vector u from the
    newest complete checkpoint; returns its step (-1: none)."""
    last = runs.complete_checkpoints(run_dir)
    if not last:
        say(env, f"--resume: no complete checkpoint in {run_dir}, starting at step 0")
        return -1
    changed = checkpoint.config_changes(last[-1], cfg)
    if changed:
        say(env, f"warning: resuming {last[-1].name} with changed settings: {', '.join(changed)}")
    state.restore(checkpoint.load_for_resume(engine, last[-1], env))
    rank_state = checkpoint.load_rank_state(last[-1], env)
    if phases is not None:
        phases.load_state_dict(rank_state.get("phase_state", {}))
    if steering is not None:
        steering.load_state_dict(rank_state.get("rmu", {}))
    say(env, f"resumed from {last[-1]} at step {state.step}")
    return state.step


def say(env: DistEnv, line: str) -> None:
    """A status line on rank 0's stderr."""
    if env.is_main:
        print(line, file=sys.stderr, flush=True)
