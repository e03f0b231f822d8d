"""The forget/retain loop. One optimizer step is one phase: forget (ascent), retain (descent),
or joint (the weighted sum, as in the paper's reference code).

Counting: `step` = optimizer steps done (forget and retain both count; exact cap at max_steps);
each step runs `grad_accum` micro-batches of `micro_batch_size` samples on every rank.
"""

from __future__ import annotations

import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn import checkpoint, data, distributed, engine as engines, methods, model as models
from unlearn.config import Config
from unlearn.distributed import DistEnv
from unlearn.errors import EXIT_REQUEUE, UserError
from unlearn.methods import Forward
from unlearn.metrics import Writer
from unlearn.rundir import prepare_run_dir
from unlearn.schedule import FORGET, JOINT, RETAIN, phase_at


@dataclass
class Sets:
    forget: list[data.Sample]
    retain: list[data.Sample]
    mismatch: data.RandomAnswers | None = None  # random answers to the forget batch's prompts


@dataclass
class State:
    step: int = 0
    streams: dict[str, data.BatchStream] = field(default_factory=dict)
    nonfinite_in_row: int = 0
    skipped_steps: int = 0
    stop_reason: str = ""

    def client_state(self) -> dict[str, Any]:
        return {"step": self.step, "skipped_steps": self.skipped_steps,
                "streams": {k: s.next_batch for k, s in self.streams.items()}}


class Preemption:
    """SIGUSR1/SIGTERM (SLURM's warning before a time limit or preemption) -> save and exit."""

    def __init__(self):
        self.requested = False
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True


def load_sets(cfg: Config, tokenizer, env: DistEnv) -> Sets:
    d, m = cfg.data, cfg.method
    forget: list[data.Sample] = []
    if m.forget_loss != methods.NONE or m.mismatch_weight:
        forget = _samples(d.forget, "forget", tokenizer, d, d.max_forget_samples)
    retain: list[data.Sample] = []
    if m.retain_loss != methods.NONE or m.mismatch_weight:
        retain = _samples(d.retain, "retain", tokenizer, d, d.max_retain_samples)
    sets = Sets(forget, retain)
    if m.mismatch_weight:
        sets.mismatch = data.random_answers(cfg, tokenizer, forget)
    return sets


def _samples(sources: str, role: str, tokenizer, d, limit: int) -> list[data.Sample]:
    out: list[data.Sample] = []
    for source in data.split_sources(sources):
        out += data.build_samples(source, role, tokenizer, d)
    if not out:
        raise UserError("a data source is empty; expected data.forget / data.retain to name files or datasets")
    return out[:limit] if limit else out


def check_lengths(sets: Sets, model_cfg, cfg: Config) -> None:
    limit = getattr(model_cfg, "max_position_embeddings", None)
    if limit and cfg.data.max_length > limit:
        raise UserError(f"data.max_length={cfg.data.max_length} exceeds the model's "
                        f"max_position_embeddings={limit}; expected data.max_length <= {limit}")


def primary_size(cfg: Config, sets: Sets) -> int:
    return len(sets.forget) if cfg.method.forget_loss != methods.NONE else len(sets.retain)


def _forward(engine, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


class Reference:
    """Reference-model logits under no_grad: LoRA -> adapters off; otherwise a frozen copy."""

    def __init__(self, cfg: Config, policy_engine, ds: dict[str, Any], env: DistEnv, dtype: torch.dtype):
        self.policy = policy_engine
        self.model = None
        if not cfg.model.lora:
            ref = models.load_reference(cfg.model, dtype)
            if engines.zero_stage(ds) == 3:
                self.model = engines.reference_engine(ref, ds)
            else:
                self.model = ref.to(env.device)

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.model is None:
            with models.adapters_disabled(self.policy.module):
                return _forward(self.policy, batch)
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


class Loop:
    def __init__(self, cfg: Config, engine, sets: Sets, tokenizer, env: DistEnv,
                 reference: Reference | None, writer: Writer, run_dir: Path, max_steps: int):
        self.cfg, self.engine, self.sets, self.env = cfg, engine, sets, env
        self.tokenizer, self.reference, self.writer = tokenizer, reference, writer
        self.run_dir, self.max_steps = run_dir, max_steps
        self.forget_obj = methods.forget_objective(cfg.method.forget_loss)
        self.retain_obj = methods.retain_objective(cfg.method.retain_loss)
        self.mismatch_obj = methods.RETAIN["random_mismatch"] if cfg.method.mismatch_weight else None

    def _micro_batches(self, state: State, names: set[str]) -> dict[str, list[dict[str, torch.Tensor]]]:
        """Collated micro-batches per set; mismatch = random answers to this step's forget prompts."""
        t = self.cfg.train
        streams = {"forget" if n == "mismatch" else n for n in names}
        idx = {n: state.streams[n].take(t.micro_batch_size, self.env.rank, self.env.world_size) for n in streams}
        pad = self.tokenizer.pad_token_id
        out = {n: [data.collate([getattr(self.sets, n)[i] for i in g], pad) for g in idx[n]]
               for n in names if n != "mismatch"}
        if "mismatch" in names:
            out["mismatch"] = [data.collate(self.sets.mismatch.samples([self.sets.forget[i] for i in g], g,
                                                                       state.step), pad) for g in idx["forget"]]
        return out

    def _term(self, obj: methods.Objective, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {k: v.to(self.env.device) for k, v in batch.items()}
        logits = _forward(self.engine, batch)
        ref = self.reference.logits(batch) if obj.needs_reference else None
        fwd = Forward(logits, batch["labels"], ref)
        loss = obj.fn(fwd, self.cfg.method)
        return loss, fwd.nll().detach()

    def step(self, state: State) -> dict[str, float]:
        """One optimizer step of the phase that `state.step` falls on; returns its metrics."""
        m = self.cfg.method
        phase = phase_at(state.step, m)
        parts: list[tuple[str, float, methods.Objective, str]] = []  # (metric, weight, objective, set)
        if phase in (FORGET, JOINT):
            if self.forget_obj:
                parts.append(("forget", m.forget_weight, self.forget_obj, "forget"))
            if self.mismatch_obj:
                parts.append(("mismatch", m.mismatch_weight, self.mismatch_obj, "mismatch"))
        if phase in (RETAIN, JOINT) and self.retain_obj:
            parts.append(("retain", m.retain_weight, self.retain_obj, "retain"))
        batches = self._micro_batches(state, {name for *_, name in parts})
        n_micro = len(next(iter(batches.values())))
        sums: dict[str, float] = {}
        tokens = 0
        t0 = time.time()
        for k in range(n_micro):
            total = 0.0
            for metric, weight, obj, name in parts:
                loss, nll = self._term(obj, batches[name][k])
                total = total + weight * loss
                sums[f"{metric}/loss"] = sums.get(f"{metric}/loss", 0.0) + loss.item() / n_micro
                sums[f"{metric}/nll"] = sums.get(f"{metric}/nll", 0.0) + nll.item() / n_micro
                tokens += int(batches[name][k]["attention_mask"].sum())
            self.engine.backward(total)
            self.engine.step()
        metrics = distributed.all_reduce_mean(sums, self.env)
        grad_norm = self.engine.get_global_grad_norm()
        metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        metrics["lr"] = self.engine.get_lr()[0]
        seconds = max(time.time() - t0, 1e-9)
        metrics["tokens_per_s"] = tokens * self.env.world_size / seconds
        metrics["step_time_s"] = seconds
        metrics["phase"] = {FORGET: 0.0, RETAIN: 1.0, JOINT: 2.0}[phase]
        return metrics

    def should_stop(self, state: State, metrics: dict[str, float]) -> str:
        ceiling = self.cfg.method.max_forget_loss
        if ceiling > 0 and metrics.get("forget/nll", -math.inf) > ceiling:
            return f"forget NLL {metrics['forget/nll']:.3f} exceeded method.max_forget_loss={ceiling}"
        return ""


def max_steps_for(cfg: Config, sets: Sets) -> int:
    if cfg.train.epochs > 0:
        return data.steps_for_epochs(cfg.train.epochs, primary_size(cfg, sets), cfg.train.global_batch_size)
    return cfg.train.max_steps


def set_seed(seed: int, rank: int) -> None:
    import numpy as np

    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def train(cfg: Config, ds_config: str, ds_patch: dict[str, Any] | None = None, *, resume: bool = False,
          overwrite: bool = False) -> Path:
    """Run one unlearning (or fine-tuning, when forget_loss=none) job; returns the run folder."""
    ds = engines.read_ds_config(ds_config, ds_patch)
    models.validate(cfg.model, engines.zero_stage(ds))
    forget_obj = methods.forget_objective(cfg.method.forget_loss)
    retain_obj = methods.retain_objective(cfg.method.retain_loss)
    if forget_obj is None and retain_obj is None:
        raise UserError("method.forget_loss and method.retain_loss are both 'none'; expected at least one objective")
    if cfg.method.schedule not in (JOINT, "alternate"):
        raise UserError(f"method.schedule '{cfg.method.schedule}' is unknown; expected alternate or joint")
    models.threads_hint()
    env = distributed.init()
    run_dir = prepare_run_dir(cfg, env, resume=resume, overwrite=overwrite)
    set_seed(cfg.train.seed, env.rank)
    tokenizer = models.load_tokenizer(cfg.model)
    sets = load_sets(cfg, tokenizer, env)
    max_steps = max_steps_for(cfg, sets)
    dtype = engines.dtype_of(ds)
    policy = models.load_policy(cfg.model, dtype)
    check_lengths(sets, policy.config, cfg)
    engine = engines.initialize(policy, ds, cfg, env, max_steps)
    reference = Reference(cfg, engine, ds, env, dtype) if methods.needs_reference(cfg.method) else None

    state = State(streams={
        name: data.BatchStream(len(samples), cfg.train.global_batch_size, cfg.train.seed + i)
        for i, (name, samples) in enumerate((("forget", sets.forget), ("retain", sets.retain))) if samples})
    last = checkpoint.complete_checkpoints(run_dir)
    if resume and last:
        client = checkpoint.load_for_resume(engine, last[-1], env)
        state.step = client["step"]
        state.skipped_steps = client.get("skipped_steps", 0)
        for name, pos in client["streams"].items():
            state.streams[name].next_batch = pos
        if env.is_main:
            print(f"resumed from {last[-1]} at step {state.step}", flush=True)

    writer = Writer(run_dir / "tb", env, purge_step=state.step + 1 if state.step else None)
    if env.is_main and state.step == 0:
        trainable, total = models.count_parameters(engine.module)
        print(f"run {run_dir} | {engines.describe(engine)} | {trainable:,}/{total:,} trainable params | "
              f"forget {len(sets.forget)} retain {len(sets.retain)} samples | {max_steps} steps", flush=True)
    loop = Loop(cfg, engine, sets, tokenizer, env, reference, writer, run_dir, max_steps)
    preempt = Preemption()
    t = cfg.train

    def save() -> None:
        checkpoint.save(engine, tokenizer, cfg, run_dir, state.step, env, state.client_state())
        checkpoint.prune(run_dir, t.keep_last_n, env)

    while state.step < max_steps:
        metrics = loop.step(state)
        state.step += 1
        stop = loop.should_stop(state, metrics)
        if state.step % t.log_every_n_steps == 0 or state.step == max_steps or stop:
            writer.log(metrics, state.step)
            writer.console(state.step, max_steps, metrics)
        if stop:
            state.stop_reason = stop
            break
        if t.save_every_n_steps and state.step % t.save_every_n_steps == 0 and state.step < max_steps:
            save()
        if _any_rank(preempt.requested, env):
            save()
            writer.close()
            if env.is_main:
                print(f"preempted at step {state.step}: checkpoint saved, exiting {EXIT_REQUEUE} for requeue",
                      flush=True)
            raise SystemExit(EXIT_REQUEUE)
    save()
    if env.is_main and cfg.run.export_dir:
        checkpoint.export(checkpoint.step_dir(run_dir, state.step), Path(cfg.run.export_dir))
        print(f"exported step {state.step} -> {cfg.run.export_dir}", flush=True)
    if state.stop_reason and env.is_main:
        print(f"stopped early at step {state.step}: {state.stop_reason}", flush=True)
    writer.close()
    return run_dir


def _any_rank(flag: bool, env: DistEnv) -> bool:
    if env.world_size == 1:
        return flag
    return distributed.all_reduce_mean({"flag": float(flag)}, env)["flag"] > 0
