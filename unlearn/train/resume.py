"""Exact resume: what a checkpoint stores besides the DeepSpeed engine (the step, the guard
counters, each data stream's position) and restoring all of it from a run's newest checkpoint.

The engine state (weights, optimizer, LR schedule) and every rank's RNG come back through
`checkpoint.load_for_resume`; with the same world size the continued run then computes exactly what
the uninterrupted one would have. A checkpoint whose files no longer match its manifest (damaged
bytes, a truncated optimizer state) is skipped with a line saying why; the run continues from the
newest one that matches.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn import data, distributed, manifest, rmu, runs
from unlearn.config import Config
from unlearn.distributed import DistEnv
from unlearn.errors import UserError
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
    newest complete checkpoint that matches its manifest; returns its step (-1: none)."""
    if not runs.complete_checkpoints(run_dir):
        say(env, f"--resume: no complete checkpoint in {run_dir}, starting at step 0")
        return -1
    ckpt = newest_intact(run_dir, env)
    changed = checkpoint.config_changes(ckpt, cfg)
    if changed:
        say(env, f"warning: resuming {ckpt.name} with changed settings: {', '.join(changed)}")
    state.restore(checkpoint.load_for_resume(engine, ckpt, env))
    rank_state = checkpoint.load_rank_state(ckpt, env)
    if phases is not None:
        phases.load_state_dict(rank_state.get("phase_state", {}))
    if steering is not None:
        steering.load_state_dict(rank_state.get("rmu", {}))
    say(env, f"resumed from {ckpt} at step {state.step}")
    return state.step


def newest_intact(run_dir: Path, env: DistEnv) -> Path:
    """The newest complete checkpoint whose files match its manifest (one saved before manifests is
    taken with a notice). Rank 0 checks, saying why it skips each newer one; every rank gets its
    answer. UserError when none is intact."""
    chosen, skipped = None, []
    if env.is_main:
        for ckpt in reversed(runs.complete_checkpoints(run_dir)):
            if not manifest.has_manifest(ckpt):  # saved before manifests: read unverified
                manifest.notice(ckpt)
                chosen = ckpt
                break
            why = manifest.damage(ckpt)
            if not why:
                chosen = ckpt
                break
            skipped.append(ckpt.name)
            say(env, f"--resume: skipped {ckpt.name}: {why}")
    chosen, skipped = distributed.broadcast_object((chosen, skipped), env)
    if chosen is None:
        raise UserError(f"--resume: no intact checkpoint in {run_dir} ({', '.join(skipped)} damaged, see above); "
                        "expected one whose files match its manifest.json (or --overwrite to start over)")
    if skipped:
        say(env, f"--resume: continuing from {chosen.name}, the newest intact checkpoint "
                 f"(skipped {', '.join(skipped)})")
    return chosen


def say(env: DistEnv, line: str) -> None:
    """A status line on rank 0's stderr."""
    if env.is_main:
        print(line, file=sys.stderr, flush=True)
