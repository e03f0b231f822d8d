"""ZeRO-1/2's one-sync optimizer step (unlearn.train.zero_step) against DeepSpeed's own step on real
engines: the same weights, gradient norms, skipped steps and learning rates, step by step."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ROOT
from unlearn import data
from unlearn import model as models
from unlearn.bench import hostcost
from unlearn.config_io import load_config
from unlearn.train import checkpoint
from unlearn.train import engine as engines


def _engine(demo_dir, env, stage: int, dtype: str, one_sync: bool):
    cfg, _ = load_config(overrides=[f"model.name_or_path={demo_dir / 'init'}", "train.micro_batch_size=2",
                                    "train.global_batch_size=2", "optim.lr=1e-2", "optim.grad_clip=0.05",
                                    f"train.one_sync_step={str(one_sync).lower()}"])
    patch = {"bf16": {"enabled": dtype == "bf16"}, "zero_optimization": {"stage": stage}}
    ds = engines.read_ds_config(ROOT / "ds_configs" / "zero2.json", patch)
    return cfg, engines.initialize(models.load_policy(cfg.model, engines.dtype_of(ds)), ds, cfg, env, max_steps=10)


def _weights(eng) -> torch.Tensor:
    with checkpoint._gathered(eng):
        return torch.cat([p.detach().float().flatten().clone() for p in eng.module.parameters()])


def _step(eng, batch, poison: bool, count: bool = False) -> int:
    """One optimizer step; with `count`, the host-device syncs of DeepSpeed's `step()` call (the
    forward's own, e.g. transformers' mask checks, are not the optimizer's)."""
    loss = eng(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    eng.backward(loss * float("nan") if poison else loss)
    if not count:
        eng.step()
        return 0
    return hostcost.count(eng.step)[0].total_syncs


@pytest.mark.parametrize("stage,dtype", [(2, "fp32"), (2, "bf16"), (1, "fp32")])
def test_one_sync_step_trains_exactly_as_deepspeeds_step(demo_dir, dist_env, stage, dtype):
    """4 steps with clipping binding (grad_clip 0.05) and a NaN loss at step 3: after every step the
    weights, the global gradient norm, the skipped-step count and the LR are equal (torch.equal) to
    DeepSpeed's own step on the same batches. A normal step reads the device once; DeepSpeed's read it
    3 times (fp32) or 4 (bf16)."""
    history = {}
    for one_sync in (True, False):
        cfg, eng = _engine(demo_dir, dist_env, stage, dtype, one_sync)
        assert eng.zero_step == ("one-sync" if one_sync else "deepspeed (train.one_sync_step=false)")
        tok = models.load_tokenizer(cfg.model)
        batch = data.to_device(data.collate(
            data.text_samples([(demo_dir / "forget.txt").read_text()], tok, 32)[:2], tok.pad_token_id), eng.device)
        seen = []
        for step in range(4):
            syncs = _step(eng, batch, poison=step == 2, count=step == 1)  # 1: a normal step after the first
            if step == 1:
                seen.append(syncs)
            seen.append((_weights(eng), eng.get_global_grad_norm(), eng.skipped_steps, eng.get_lr()[0]))
        if one_sync:  # weights still view the flat buffer: the re-pointing was skipped, not needed
            assert eng.optimizer._one_sync_views is not None
        history[one_sync] = seen
        eng.destroy()
    ours, theirs = history[True], history[False]
    assert ours[1] == 1 and theirs[1] == (4 if dtype == "bf16" else 3)
    # bit-equal on a CPU (the fused norm loops over the same per-tensor kernel); CUDA's fused norm
    # kernel sums in another order
    same = torch.equal if not torch.cuda.is_available() else lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=0)
    states = [s for s in ours if isinstance(s, tuple)], [s for s in theirs if isinstance(s, tuple)]
    for step, (a, b) in enumerate(zip(*states)):
        assert same(a[0], b[0]), f"weights differ after step {step + 1}"
        assert a[1:] == b[1:] if step == 2 else (same(a[1], b[1]) and a[2:] == b[2:]), (step, a[1:], b[1:])
    assert ours[-1][2] == 1 and torch.isinf(torch.tensor(ours[3][1]))  # step 3 skipped, norm inf
    assert not torch.equal(states[0][0][0], states[0][-1][0])  # the weights moved
    assert float(ours[0][1]) > 0.05  # the clip bound: every step was scaled down


def test_zero3_and_switched_off_keep_deepspeeds_step(demo_dir, dist_env):
    """Where the wrapper is not read against DeepSpeed's code (ZeRO-3) the engine keeps its own step,
    and says which it runs (checkpoints record it in meta.json)."""
    cfg, _ = load_config(overrides=[f"model.name_or_path={demo_dir / 'init'}", "train.micro_batch_size=2",
                                    "train.global_batch_size=2"])
    ds = engines.read_ds_config(ROOT / "ds_configs" / "zero3.json")
    eng = engines.initialize(models.load_policy(cfg.model), ds, cfg, dist_env, max_steps=2)
    assert eng.zero_step.startswith("deepspeed (DeepSpeedZeroOptimizer_Stage3")
    assert "step" not in vars(eng.optimizer)
    eng.destroy()
