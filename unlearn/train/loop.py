"""The training run around the step (unlearn.train.step): inputs checked before start-up, the run
folder, the engine and reference, resume, then the loop over optimizer steps with logging, periodic
saves, the guards (non-finite steps, STOP files, preemption) and the final save.

Counting: `step` = optimizer steps done (forget and retain both count; exact cap at max_steps).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import torch

from unlearn import distributed, methods, rmu, runs
from unlearn import model as models
from unlearn.config import Config
from unlearn.distributed import DistEnv
from unlearn.errors import EXIT_REQUEUE, Diverged, UserError
from unlearn.logger import Window, Writer
from unlearn.sets import Sets, check_lengths, load_sets, make_streams, max_steps_for
from unlearn.train import checkpoint, guards, preflight
from unlearn.train import engine as engines
from unlearn.train.phase_state import SEPARATE, PhaseStates
from unlearn.train.resume import State, resume_from_last, say
from unlearn.train.rundir import check_run_dir, prepare_run_dir, write_footprint
from unlearn.train.step import Loop, Reference, steering_for


def set_seed(seed: int, rank: int) -> None:
    import numpy as np

    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def train(cfg: Config, ds_config: str, ds_patch: dict[str, Any] | None = None, *, resume: bool = False,
          overwrite: bool = False) -> Path:
    """Run one unlearning (or fine-tuning, when forget_loss=none) job; returns the run folder.

    Raises UserError (bad input; nothing written), Diverged (after train.max_nonfinite_steps
    non-finite steps in a row), or SystemExit(EXIT_REQUEUE) after a preemption signal and a save.
    """
    preempt = guards.Preemption()  # from the start: a signal while loading is honoured at step 1
    try:
        return _train(cfg, ds_config, ds_patch, resume, overwrite, preempt)
    finally:
        preempt.restore()


def _checked_inputs(cfg: Config, ds_config: str, ds_patch: dict[str, Any] | None, resume: bool | str,
                    overwrite: bool):
    """Everything checkable before start-up: config values, DeepSpeed JSON, run folder, data, lengths."""
    ds = engines.read_ds_config(ds_config, ds_patch)
    cfg = engines.resolve_micro_batch(cfg, distributed.env_from_os().world_size)  # micro 0 = global / ranks
    preflight.check_config(cfg, ds, distributed.env_from_os().world_size, resume=resume)
    check_run_dir(cfg, resume=resume, overwrite=overwrite)
    models.threads_hint()
    set_seed(cfg.train.seed, distributed.env_from_os().rank)
    tokenizer = models.load_tokenizer(cfg.model)
    if cfg.run.oracle:  # read only by the end-of-run table: a wrong path must not cost the run
        models.require_local_exists("run.oracle", cfg.run.oracle)
    sets = load_sets(cfg, tokenizer, distributed.env_from_os())
    model_config = models.load_model_config(cfg.model)
    check_lengths(sets, model_config, cfg)
    models.check_lora_targets(cfg.model, model_config)
    rmu.check(cfg, model_config)
    max_steps = max_steps_for(cfg, sets)
    return cfg, ds, tokenizer, sets, max_steps


def _train(cfg: Config, ds_config: str, ds_patch: dict[str, Any] | None, resume: bool, overwrite: bool,
           preempt: guards.Preemption) -> Path:
    try:  # bad input fails here, in seconds, before distributed start-up and the run folder
        cfg, ds, tokenizer, sets, max_steps = _checked_inputs(cfg, ds_config, ds_patch, resume, overwrite)
    except UserError as exc:
        exc.every_rank = True  # each rank found the same problem: one error line, from rank 0
        raise
    env = distributed.init()
    target = Path(cfg.run.output_dir) / cfg.run.name if cfg.run.name else None
    created = overwrite or target is None or not (target.is_dir() and any(target.iterdir()))
    run_dir = prepare_run_dir(cfg, env, resume=resume, overwrite=overwrite)
    progress = {"steps": 0}
    try:
        return _train_in(cfg, ds, env, run_dir, tokenizer, sets, max_steps, resume, preempt, progress)
    except BaseException:
        # A start that fails before its first step leaves nothing behind, so the corrected retry
        # is not refused as "already exists"; a run that trained keeps its folder.
        if created and env.is_main and not progress["steps"] and not runs.complete_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def load_policy(cfg: Config, dtype: torch.dtype):
    """The model to train (RMU: only its chosen layers trainable, set before ZeRO partitions them;
    train.compile: its decoder layers compiled)."""
    policy = models.load_policy(cfg.model, dtype)
    rmu.restrict_trainable(policy, cfg.method)
    if cfg.train.compile:
        engines.compile_layers(policy)
    return policy


def _train_in(cfg: Config, ds: dict[str, Any], env: DistEnv, run_dir: Path, tokenizer, sets: Sets, max_steps: int,
              resume: bool | str, preempt: guards.Preemption, progress: dict[str, int]) -> Path:
    checkpoint.remove_partial(run_dir, env)  # .step-*.tmp left by a save that was killed
    dtype = engines.dtype_of(ds)
    policy = load_policy(cfg, dtype)
    engine = engines.initialize(policy, ds, cfg, env, max_steps)
    # Training mode always (gradient checkpointing needs it); with model.dropout=false the policy's
    # dropout probabilities are 0 (unlearn.model.zero_dropout), so its passes are deterministic.
    engine.train()
    reference = Reference(cfg, engine, ds, env, dtype) if methods.needs_reference(cfg.method) else None

    state = State(streams=make_streams(cfg, sets))
    phases = PhaseStates(engine, cfg.optim.phase_state == SEPARATE)
    steering = steering_for(cfg, engine, reference)
    last_saved = resume_from_last(state, engine, cfg, run_dir, env, phases, steering) if resume else -1
    # On resume, events past the restored step (logged before the crash) are dropped, so curves
    # do not double back; a resume without a checkpoint drops them all.
    writer = Writer(run_dir / "tb", env, purge_step=state.step + 1 if resume else None)
    if env.is_main and state.step == 0:
        trainable, total = models.count_parameters(engine.module)
        print(f"run {run_dir} | {engines.describe(engine)} | {trainable:,}/{total:,} trainable params | "
              f"forget {len(sets.forget)} retain {len(sets.retain)} samples | {max_steps} steps", flush=True)
    loop = Loop(cfg, engine, sets, tokenizer, env, reference, writer, run_dir, max_steps, phases, steering)
    t = cfg.train

    def save() -> None:
        nonlocal last_saved
        if state.step == last_saved:  # e.g. a preemption right after a periodic save
            return
        checkpoint.save(engine, tokenizer, cfg, run_dir, state.step, env, state.client_state(),
                        engine_state=t.save_engine_state,
                        rank_state={**({"phase_state": phases.state_dict()} if phases.separate else {}),
                                    **({"rmu": steering.state_dict()} if steering else {})} or None)
        checkpoint.prune(run_dir, t.keep_last_n, env)
        last_saved = state.step

    window = Window()
    while state.step < max_steps:
        metrics = loop.step(state)
        skipped = metrics["skipped"] > 0
        state.record_step(skipped)
        progress["steps"] += 1
        stop = guards.forget_ceiling(metrics, cfg.method.max_forget_loss) or guards.stop_file(run_dir, env)
        window.add(metrics)
        if state.step % t.log_every_n_steps == 0 or state.step == max_steps or stop or skipped:
            loop.verify()
            logged = window.pop_means()  # "skipped" becomes the fraction of skipped steps since the last log
            logged.update(skipped_steps=float(state.skipped_steps), nonfinite_in_row=float(state.nonfinite_in_row))
            writer.log(logged, state.step)
            writer.console(state.step, max_steps, logged)
        if skipped:
            say(env, f"step {state.step}: non-finite loss or gradient, step skipped (weights untouched; "
                      f"{state.nonfinite_in_row} in a row, {state.skipped_steps} in total)")
        reason = guards.divergence(state.nonfinite_in_row, t.max_nonfinite_steps, state.step, run_dir)
        if reason:
            writer.text("stop_reason", reason, state.step)
            writer.close()
            raise Diverged(reason)
        if stop:
            state.stop_reason = stop
            writer.text("stop_reason", stop, state.step)
            break
        if t.save_every_n_steps and state.step % t.save_every_n_steps == 0 and state.step < max_steps:
            save()
        if guards.on_any_rank(preempt.requested, env):
            save()
            writer.close()
            why = f" ({preempt.reason})" if preempt.reason else " (on another rank)"
            say(env, f"preempted at step {state.step}: checkpoint saved, exiting {EXIT_REQUEUE} for requeue{why}")
            raise SystemExit(EXIT_REQUEUE)
    save()
    if env.is_main and cfg.run.export_dir:
        checkpoint.export(runs.step_dir(run_dir, state.step), Path(cfg.run.export_dir))
        print(f"exported step {state.step} -> {cfg.run.export_dir}", flush=True)
    if state.stop_reason:
        say(env, f"stopped early at step {state.step}: {state.stop_reason}")
    write_footprint(run_dir, env)
    writer.close()
    return run_dir
