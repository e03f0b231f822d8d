"""Our unlearning step, built exactly as `unlearn.train.loop.train` builds it (engine, reference, loop)."""

from __future__ import annotations

from pathlib import Path

from unlearn import model as models
from unlearn import sets as sample_sets
from unlearn.bench.presets import Variant
from unlearn.bench.workload import Spec, run_config, streams
from unlearn.train import engine as engines
from unlearn.train import loop as train

ROOT = Path(__file__).resolve().parents[2]


class OurStep:
    """`step()` runs one optimizer step of train.Loop; `state.streams` says which samples it took."""

    def __init__(self, spec: Spec, v: Variant, env):
        self.cfg = cfg = run_config(spec, v)
        ds = engines.read_ds_config(ROOT / v.ds_config, {"bf16": {"enabled": v.bf16}})
        models.validate(cfg.model, engines.zero_stage(ds))
        tokenizer = models.load_tokenizer(cfg.model)
        self.sets = sample_sets.load_sets(cfg, tokenizer, env)
        dtype = engines.dtype_of(ds)
        policy = train.load_policy(cfg, dtype)
        self.engine = engines.initialize(policy, ds, cfg, env, cfg.train.max_steps)
        reference = train.Reference(cfg, self.engine, ds, env, dtype)
        self.state = train.State(streams=streams(cfg, self.sets))
        self.loop = train.Loop(cfg, self.engine, self.sets, tokenizer, env, reference, writer=None,
                               run_dir=None, max_steps=cfg.train.max_steps)

    def step(self) -> dict[str, float]:
        metrics = self.loop.step(self.state)
        self.state.step += 1
        tokens = metrics["tokens_per_s"] * metrics["step_time_s"]  # one rank: this step's real tokens
        metrics["padded_tokens"] = round(tokens * (1 + metrics["padding"]))  # positions the policy computed
        return metrics
