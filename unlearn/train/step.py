"""One optimizer step of the forget/retain objective. A step is one phase: forget (ascent), retain
(descent), or joint (the weighted sum, as in the paper's reference code), over `grad_accum`
micro-batches of `micro_batch_size` samples on every rank. `Loop.step` draws the step's samples,
runs the terms' passes (packed, or one padded pass per term), backpropagates and applies the step;
`Reference` gives the reference model's logits.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from unlearn import data, distributed, methods, rmu
from unlearn import model as models
from unlearn.config import Config
from unlearn.distributed import DistEnv
from unlearn.logger import Writer
from unlearn.methods import Forward
from unlearn.sets import Sets
from unlearn.train import dual, guards, packing
from unlearn.train import engine as engines
from unlearn.train.phase_state import SEPARATE, PhaseStates
from unlearn.train.resume import State
from unlearn.train.schedule import FORGET, JOINT, RETAIN, phase_at


def logits_span(labels: torch.Tensor) -> int:
    """How many trailing positions of a (B, T) batch any loss reads logits at: from the position
    before the batch's first labelled token (prompts need no (T, V) logits); T for plain text."""
    labelled = (labels != data.IGNORE).any(0)                      # (T,)
    first = int(labelled.int().argmax()) if bool(labelled.any()) else 0
    return labels.size(1) - max(first - 1, 0)


def forward_logits(engine, batch: dict[str, torch.Tensor], keep: int | torch.Tensor = 0) -> torch.Tensor:
    """Logits (B, keep, V) of the last `keep` positions (0 or T: all; the LM head skips the rest), or
    (B, K, V) at the columns of a (B, K) long `keep` (a packed batch, which brings position_ids)."""
    kwargs = {"logits_to_keep": keep} if torch.is_tensor(keep) or 0 < keep < batch["input_ids"].size(1) else {}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    return engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs).logits


class Reference:
    """Reference-model logits under no_grad: LoRA -> adapters off; otherwise a frozen copy."""

    def __init__(self, cfg: Config, policy_engine, ds: dict[str, Any], env: DistEnv, dtype: torch.dtype):
        self.policy = policy_engine
        self.dropout = cfg.model.dropout
        self.model = None
        if not cfg.model.lora:
            ref = models.load_reference(cfg.model, dtype)
            if engines.zero_stage(ds) == 3:
                self.model = engines.reference_engine(ref, ds)
            else:
                self.model = ref.to(env.device)
                if cfg.train.compile:  # a graph of its own: no gradients
                    engines.compile_layers(self.model)

    @property
    def module(self) -> torch.nn.Module:
        """The reference network (for layer taps): under LoRA the policy's own, adapters off when it runs."""
        return self.policy.module if self.model is None else getattr(self.model, "module", self.model)

    @torch.no_grad()
    def logits(self, batch: dict[str, torch.Tensor], keep: int | torch.Tensor = 0) -> torch.Tensor:
        if self.model is None:
            with models.adapters_disabled(self.policy.module, eval_mode=self.dropout):
                return forward_logits(self.policy, batch, keep)
        return forward_logits(self.model, batch, keep)


class Loop:
    def __init__(self, cfg: Config, engine, sets: Sets, tokenizer, env: DistEnv,
                 reference: Reference | None, writer: Writer, run_dir: Path, max_steps: int,
                 phases: PhaseStates | None = None, steering: rmu.Steering | None = None):
        self.cfg, self.engine, self.sets, self.env = cfg, engine, sets, env
        self.phases = phases or PhaseStates(engine, cfg.optim.phase_state == SEPARATE)
        self.tokenizer, self.reference, self.writer = tokenizer, reference, writer
        self.run_dir, self.max_steps = run_dir, max_steps
        self.forget_obj = methods.forget_objective(cfg.method.forget_loss)
        self.retain_obj = methods.retain_objective(cfg.method.retain_loss)
        self.mismatch_obj = methods.RETAIN["random_mismatch"] if cfg.method.mismatch_weight else None
        self.dual = dual.RetainDual(cfg.method) if cfg.method.forget_loss == "pdu" else None
        self.steering = steering or steering_for(cfg, engine, reference)
        objs = [o for o in (self.forget_obj, self.retain_obj, self.mismatch_obj) if o is not None]
        self.packed = cfg.train.pack and all(o.name in packing.PACKABLE and not o.reads_all(cfg.method) for o in objs)
        self.dtype = engine.module.get_input_embeddings().weight.dtype  # a packed batch's attention mask
        self.applied_finite: torch.Tensor | None = None  # see verify()

    def _micro_samples(self, state: State, names: set[str]) -> dict[str, list[list[data.Sample]]]:
        """Micro-batches (sample lists) per set; mismatch = random answers to this step's forget prompts."""
        t = self.cfg.train
        streams = {"forget" if n == "mismatch" else n for n in names}
        idx = {n: state.streams[n].take(t.micro_batch_size, self.env.rank, self.env.world_size) for n in streams}
        out = {n: [[getattr(self.sets, n)[i] for i in g] for g in idx[n]] for n in names if n != "mismatch"}
        if "mismatch" in names:
            out["mismatch"] = [self.sets.mismatch.samples([self.sets.forget[i] for i in g], g, state.step)
                               for g in idx["forget"]]
        if "forget" in out and self.sets.alternate is not None:  # idknll, dpo, idkdpo: their alternate answers
            out["alternate"] = [self.sets.alternate.samples([self.sets.forget[i] for i in g], g, state.step)
                                for g in idx["forget"]]
        return out

    def _chunks(self, name: str, samples: list[data.Sample]) -> list[dict[str, torch.Tensor]]:
        """A micro-batch collated; the random-mismatch one cut into length-sorted chunks."""
        pad = self.tokenizer.pad_token_id
        if name != "mismatch":
            return [data.collate(samples, pad)]
        chunks = data.length_chunks([len(s["input_ids"]) for s in samples], self.cfg.data.mismatch_pass_cost)
        return [data.collate([samples[i] for i in c], pad) for c in chunks]

    def _losses(self, parts, micro: dict[str, list[data.Sample]]) -> tuple[list, int, int]:
        """([(loss, detached answer NLL)] per part, real tokens, positions computed) of one micro-batch."""
        if not self.packed:
            out, tokens, padded = [], 0, 0
            for *_, obj, name in parts:
                chunks = self._chunks(name, micro[name])
                if name == "forget" and "alternate" in micro:  # the same prompts, alternate answers: alt_* keys
                    alt = data.collate(micro["alternate"], self.tokenizer.pad_token_id)
                    chunks[0].update({f"alt_{k}": v for k, v in alt.items()})
                out.append(self._term(obj, chunks))
                tokens += sum(int(c["attention_mask"].sum()) for c in chunks)
                padded += sum(c["attention_mask"].numel() for c in chunks)
            return out, tokens, padded
        objs = {name: obj for *_, obj, name in parts}
        fwds, tokens, padded = packing.forwards(
            lambda b, keep: forward_logits(self.engine, b, keep), lambda b, keep: self.reference.logits(b, keep),
            {n: micro[n] for n in objs}, {n: o.needs_reference for n, o in objs.items()}, self.tokenizer.pad_token_id,
            self.dtype,
            self.env.device)
        out = []
        for name, obj in objs.items():
            loss = obj.fn(fwds[name], self.cfg.method)
            with torch.no_grad():  # logged only: no graph, and free when the loss computed it
                out.append((loss, fwds[name].nll().detach()))
        return out, tokens, padded

    def _term(self, obj: methods.Objective, chunks: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, detached answer-token NLL) of one micro-batch, given as chunks of its samples.
        Several chunks (random mismatch: a token-mean NLL) are weighted by their answer tokens, so
        the loss is the one-batch loss."""
        if len(chunks) == 1:
            return self._chunk_term(obj, chunks[0])
        assert obj.name == "random_mismatch", f"{obj.name} is not a token mean: its batch cannot be cut"
        counts = [int((c["labels"][:, 1:] != data.IGNORE).sum()) for c in chunks]
        parts = [self._chunk_term(obj, c) for c in chunks]
        total = max(sum(counts), 1)
        return (sum(n / total * loss for n, (loss, _) in zip(counts, parts)),
                sum(n / total * nll for n, (_, nll) in zip(counts, parts)))

    def _chunk_term(self, obj: methods.Objective, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        alt = {k[4:]: v for k, v in batch.items() if k.startswith("alt_")}
        batch = {k: v for k, v in batch.items() if not k.startswith("alt_")}
        fwd = self._pass(obj, batch, grad=obj.forget_grad)
        if obj.alternate:  # the same prompts with alternate answers (unlearn.alternates)
            fwd.alt = self._pass(obj, alt)
        loss = obj.fn(fwd, self.cfg.method)
        return loss, fwd.nll().detach()

    def _pass(self, obj: methods.Objective, batch: dict[str, torch.Tensor], grad: bool = True) -> Forward:
        """One policy (and reference) pass over a host batch (moved here: its span is read on the host)."""
        every = obj.reads_all(self.cfg.method)  # e.g. kl_positions=all: logits at every position
        keep = batch["labels"].size(1) if every else logits_span(batch["labels"])
        batch = data.to_device(batch, self.env.device)
        taps = self.steering if obj.needs_hidden else None  # RMU: decoder layer l's output too
        with torch.set_grad_enabled(grad), rmu.tap(taps and taps.policy_layer) as hidden:
            logits = forward_logits(self.engine, batch, keep)
        with rmu.tap(taps and taps.reference_layer) as ref_hidden:
            ref = self.reference.logits(batch, keep) if obj.needs_reference else None
        return Forward(logits, batch["labels"][:, -keep:], ref,
                       hidden=taps.hidden(hidden, ref_hidden, batch["labels"]) if taps else None,
                       tokens=batch["attention_mask"] if every else None)

    def step(self, state: State) -> dict[str, float | torch.Tensor]:
        """One optimizer step of the phase that `state.step` falls on; returns its metrics.

        The host never waits for the device here (DeepSpeed's step decides on the gradients'
        finiteness, its one wait): losses, NLLs and the gradient norm come back as 0-dim device
        tensors (float64, the losses already averaged over ranks), read on the host when logged
        (`unlearn.logger.Window`); everything else is a float."""
        m = self.cfg.method
        phase = phase_at(state.step, m)
        self.phases.enter(phase)  # optim.phase_state=separate: this phase's own AdamW moments
        parts: list[tuple[str, float, methods.Objective, str]] = []  # (metric, weight, objective, set)
        if phase in (FORGET, JOINT):
            if self.forget_obj:
                parts.append(("forget", m.forget_weight, self.forget_obj, "forget"))
            if self.mismatch_obj:
                parts.append(("mismatch", m.mismatch_weight, self.mismatch_obj, "mismatch"))
        if phase in (RETAIN, JOINT) and self.retain_obj:
            weight = self.dual.weight(state.dual) if self.dual else m.retain_weight  # PDU: lambda
            parts.append(("retain", weight, self.retain_obj, "retain"))
        lam = self.dual.weight(state.dual) if self.dual else 0.0  # PDU: lambda at the step's start (logged)
        batches = self._micro_samples(state, {name for *_, name in parts})
        n_micro = len(next(iter(batches.values())))
        sums: dict[str, torch.Tensor] = {}  # float64, as the host's sum of Python floats was
        tokens = padded = 0  # real and padded tokens through the policy (this rank)
        finite = None  # (bool) on the device: every loss of the step so far is finite
        lr = self.engine.get_lr()[0]  # the rate this step applies (the scheduler advances in step())
        t0 = time.time()
        for k in range(n_micro):
            total = 0.0
            terms, n_tokens, n_padded = self._losses(parts, {name: b[k] for name, b in batches.items()})
            for (metric, weight, _, _), (loss, nll) in zip(parts, terms):
                if metric == "retain" and self.dual:  # PDU: lambda (pdu_update=micro_batch: moved by each micro-batch)
                    weight = self.dual.weight(state.dual)
                total = total + weight * loss
                for key, value in ((f"{metric}/loss", loss), (f"{metric}/nll", nll)):
                    sums[key] = sums.get(key, 0.0) + value.detach().double() / n_micro
            tokens, padded = tokens + n_tokens, padded + n_padded
            # A non-finite loss spoils the whole optimizer step: its gradients are made NaN, on the
            # device, so that ZeRO's global check discards the step on every rank (see unlearn.guards).
            finite = guards.finite(total) if finite is None else finite & guards.finite(total)
            self.engine.backward(guards.poison_unless(finite, total))
            self.engine.step()
            if self.dual and self.dual.per_micro_batch and phase != FORGET:
                retain = terms[[m for m, *_ in parts].index("retain")][0].item()
                self.dual.update_micro_batch(state.dual, retain, state.streams["forget"].epoch, self.env)
        applied = self.engine.was_step_applied()
        if applied:  # verified when the metrics are read (no wait now)
            self.applied_finite = finite if self.applied_finite is None else self.applied_finite & finite
        if not applied and self.engine.lr_scheduler is not None:
            # DeepSpeed holds its scheduler on a skipped step while our step counter moves on: advance
            # it here, so the LR at step s is the schedule's value at s and reaches its end at max_steps.
            self.engine.lr_scheduler.step()
        metrics: dict[str, float | torch.Tensor] = distributed.all_reduce_mean_lazy(sums, self.env)
        metrics["skipped"] = 0.0 if applied else 1.0  # non-finite loss or gradient: weights untouched
        grad_norm = self.engine.get_global_grad_norm()
        metrics["grad_norm"] = float("nan") if grad_norm is None else \
            grad_norm.detach().double() if torch.is_tensor(grad_norm) else float(grad_norm)
        metrics["lr"] = lr
        seconds = max(time.time() - t0, 1e-9)
        metrics["tokens_per_s"] = tokens * self.env.world_size / seconds
        metrics["step_time_s"] = seconds
        # compute spent on pad tokens (packed: negative where shared prompts save more than padding costs)
        metrics["padding"] = padded / tokens - 1 if tokens else 0.0
        metrics["phase"] = {FORGET: 0.0, RETAIN: 1.0, JOINT: 2.0}[phase]
        if self.dual:  # log the lambda this step used, then move it by this step's retain loss
            metrics[dual.METRIC] = lam
            if applied and "retain/loss" in metrics and not self.dual.per_micro_batch:  # PDU reads its loss: one wait
                self.dual.update(state.dual, float(metrics["retain/loss"]), state.streams["forget"].epoch)
        return metrics

    def verify(self) -> None:
        """Every applied step since the last call had finite losses (one wait; called when logging)."""
        if self.applied_finite is not None:
            ok, self.applied_finite = bool(self.applied_finite), None
            assert ok, "a step with a non-finite loss reached the weights"


def steering_for(cfg: Config, engine, reference: Reference | None) -> rmu.Steering | None:
    """RMU's layer taps and vector u when the method has an RMU term."""
    if not rmu.selected(cfg.method):
        return None
    return rmu.Steering(cfg, engine.module, reference.module if reference is not None else None)
