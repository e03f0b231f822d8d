"""The benchmark's unlearning workload, identical for every variant: the paper's method
(ga on harmful answers + random mismatch + KL on normal data, one joint step), the same samples,
batch and seed; batches come from the same `data.BatchStream`s that `unlearn.train` builds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from unlearn import data
from unlearn import sets as sample_sets
from unlearn.bench.presets import Variant
from unlearn.config import Config, DataConfig, MethodConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig


@dataclass(frozen=True)
class Spec:
    """One variant's measurement, passed to a worker process as JSON."""

    variant: str
    model_dir: str
    forget: str
    """Harmful QA in PKU-SafeRLHF columns (the demo's harmful.jsonl by default)."""
    retain: str
    """Normal QA (question/answer or TruthfulQA columns)."""
    batch: int = 2
    """Samples per term per optimizer step (the paper's batch is 2)."""
    max_length: int = 128
    steps: int = 5
    """Timed optimizer steps."""
    warmup: int = 2
    """Untimed optimizer steps first (allocator, kernels, DeepSpeed buckets)."""
    seed: int = 0
    lr: float = 2e-6
    group_by_length: bool = True
    """data.group_by_length for every variant (the baseline takes the same samples)."""
    mismatch_pass_cost: int = 256
    """data.mismatch_pass_cost for our loop (the baseline runs the mismatch batch in one pass)."""
    threads: int = 0
    """CPU threads for torch (0 = all cores)."""
    trace_steps: int = 0
    """Steps to profile after the timed ones, twice (unlearn.bench.trace; 0 = none)."""
    trace_dir: str = ""
    """Where the profiler traces go (TRACE_DIR/<variant>.json and .stacks.json)."""

    def to_json(self) -> dict:
        return asdict(self)


def run_config(spec: Spec, v: Variant) -> Config:
    return Config(
        model=ModelConfig(name_or_path=spec.model_dir, lora=v.lora, load_in_8bit=v.load_in_8bit,
                          gradient_checkpointing=v.gradient_checkpointing),
        data=DataConfig(forget=spec.forget, retain=spec.retain, forget_format="auto", retain_format="auto",
                        max_length=spec.max_length, group_by_length=spec.group_by_length,
                        mismatch_pass_cost=spec.mismatch_pass_cost),
        method=MethodConfig(forget_loss="ga", retain_loss="kl", mismatch_weight=1.0, schedule="joint"),
        optim=OptimConfig(name=v.optimizer, lr=spec.lr, schedule="constant"),
        train=TrainConfig(micro_batch_size=spec.batch, global_batch_size=spec.batch, seed=spec.seed,
                          max_steps=spec.warmup + spec.steps, pack=v.pack,
                          one_sync_step=v.one_sync_step, compile=v.compile),
        run=RunConfig(name="bench", output_dir=str(Path(spec.model_dir).parent / "runs")))


def streams(cfg: Config, sets: sample_sets.Sets) -> dict[str, data.BatchStream]:
    return sample_sets.make_streams(cfg, sets)


def next_batches(cfg: Config, sets: sample_sets.Sets, streams_: dict[str, data.BatchStream],
                 step: int) -> dict[str, list]:
    """The samples of optimizer step `step` per term (advances the streams; one rank)."""
    idx = {name: s.take(cfg.train.micro_batch_size, 0, 1)[0] for name, s in streams_.items()}
    out = {name: [getattr(sets, name)[i] for i in ids] for name, ids in idx.items()}
    out["mismatch"] = sets.mismatch.samples(out["forget"], idx["forget"], step)
    return out


def padding(cfg: Config, sets: sample_sets.Sets) -> dict[str, dict[str, float]]:
    """Per stream, the padding of one epoch's micro-batches (padded / real tokens - 1), with a plain
    shuffle and with length grouping: what dynamic padding still wastes, and what grouping saves."""
    out: dict[str, dict[str, float]] = {}
    for grouped in (False, True):
        c = replace(cfg, data=replace(cfg.data, group_by_length=grouped))
        for name, stream in sample_sets.make_streams(c, sets).items():
            real, padded = data.padded_tokens(getattr(sets, name), stream, cfg.train.micro_batch_size)
            out.setdefault(name, {})["grouped" if grouped else "shuffled"] = padded / real - 1
    return out


def tokens(batches: dict[str, list], mismatch_pass_cost: int | None = None) -> tuple[int, int, int]:
    """(real tokens through the policy, real tokens through the reference = the normal batch,
    tokens through the policy when each batch is padded to its longest sample; with
    `mismatch_pass_cost`, the mismatch batch cut as train.Loop cuts it)."""
    total = sum(len(s["input_ids"]) for samples in batches.values() for s in samples)
    padded = 0
    for name, samples in batches.items():
        lengths = [len(s["input_ids"]) for s in samples]
        cut = name == "mismatch" and mismatch_pass_cost is not None
        for chunk in data.length_chunks(lengths, mismatch_pass_cost) if cut else [range(len(lengths))]:
            padded += len(chunk) * max(lengths[i] for i in chunk)
    return total, sum(len(s["input_ids"]) for s in batches.get("retain", [])), padded
