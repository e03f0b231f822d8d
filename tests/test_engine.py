"""A real single-rank DeepSpeed engine: a saved checkpoint reloads with the engine's logits."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import ROOT
from unlearn import data
from unlearn import model as models
from unlearn.config_io import load_config
from unlearn.errors import UserError
from unlearn.train import checkpoint
from unlearn.train import engine as engines


def _engine(demo_dir, stage: int, env, extra=(), ds_patch=None):
    cfg, _ = load_config(overrides=[f"model.name_or_path={demo_dir / 'init'}", "train.micro_batch_size=2",
                                    "train.global_batch_size=2", "optim.lr=1e-2", *extra])
    ds = engines.read_ds_config(ROOT / "ds_configs" / f"zero{stage}.json", ds_patch)
    policy = models.load_policy(cfg.model)
    return cfg, engines.initialize(policy, ds, cfg, env, max_steps=10)


@pytest.mark.parametrize("stage", [2, 3])
def test_checkpoint_reloads_with_the_engines_logits(demo_dir, dist_env, tmp_path, stage):
    from transformers import AutoModelForCausalLM

    cfg, eng = _engine(demo_dir, stage, dist_env)
    tok = models.load_tokenizer(cfg.model)
    samples = data.text_samples([(demo_dir / "forget.txt").read_text()], tok, 32)
    batch = data.collate(samples[:2], tok.pad_token_id)
    cpu_batch, batch = batch, data.to_device(batch, eng.device)
    for _ in range(2):  # move the weights away from the init so a stale save would be caught
        loss = eng(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        eng.backward(loss)
        eng.step()
    eng.eval()
    with torch.no_grad():
        expected = eng(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ckpt = checkpoint.save(eng, tok, cfg, tmp_path, 2, dist_env, {"step": 2, "streams": {}})
    assert ckpt.name == "step-000002" and (ckpt / "COMPLETE").is_file()
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 2 and meta["zero_stage"] == stage and meta["world_size"] == 1
    assert meta["dtype"] == "float32" and "torch" in meta["versions"]
    reloaded = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    with torch.no_grad():
        got = reloaded(input_ids=cpu_batch["input_ids"], attention_mask=cpu_batch["attention_mask"]).logits
    expected = expected.cpu()
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    initial = AutoModelForCausalLM.from_pretrained(demo_dir / "init").eval()
    with torch.no_grad():
        assert not torch.allclose(initial(input_ids=cpu_batch["input_ids"]).logits, got, atol=1e-3)


def test_policy_and_reference_passes_build_no_kv_cache(demo_dir):
    # a training pass reads logits only: a cache of every layer's keys and values is wasted memory
    cfg, _ = load_config(overrides=[f"model.name_or_path={demo_dir / 'init'}"])
    ids = torch.tensor([[2, 5, 6, 7]])
    for model in (models.load_policy(cfg.model), models.load_reference(cfg.model)):
        with torch.no_grad():
            assert model(input_ids=ids).past_key_values is None


def test_ds_config_receives_batch_and_clipping_from_run_config(demo_dir, dist_env):
    cfg, eng = _engine(demo_dir, 2, dist_env, ["optim.grad_clip=0.5", "train.global_batch_size=6"])
    assert eng.train_micro_batch_size_per_gpu() == 2
    assert eng.gradient_accumulation_steps() == 3
    assert eng.gradient_clipping() == 0.5


def test_fused_adamw_path_gives_the_same_step(demo_dir, dist_env, monkeypatch):
    """Every device takes torch's fused AdamW (engine.FUSED_ADAMW): it must reach the optimizer and
    step exactly like the unfused one."""
    assert engines.optimizer_on_gpu({"zero_optimization": {"stage": 2}}) is torch.cuda.is_available()
    assert not engines.optimizer_on_gpu({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}})
    weights = {}
    initial = None
    for fused in (False, True):
        monkeypatch.setattr(engines, "FUSED_ADAMW", fused)
        cfg, eng = _engine(demo_dir, 2, dist_env)
        assert eng.optimizer.optimizer.defaults["fused"] is fused
        initial = torch.cat([p.detach().flatten() for p in eng.module.parameters()])
        tok = models.load_tokenizer(cfg.model)
        samples = data.text_samples([(demo_dir / "forget.txt").read_text()], tok, 32)[:2]
        batch = data.to_device(data.collate(samples, tok.pad_token_id), eng.device)
        for _ in range(2):
            eng.backward(eng(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             labels=batch["labels"]).loss)
            eng.step()
        weights[fused] = torch.cat([p.detach().flatten() for p in eng.module.parameters()])
        eng.destroy()
    # two steps of lr 1e-2 move weights by up to 2e-2; the kernels differ only in rounding order
    moved = (weights[False] - initial).abs().max()
    assert moved > 1e-2
    assert (weights[True] - weights[False]).abs().max() < 1e-3 * moved


def test_precision_left_out_means_bf16_where_the_hardware_has_it(monkeypatch):
    monkeypatch.setattr(engines, "bf16_supported", lambda: False)  # as on a CPU
    for name in ("zero2", "zero3", "zero3_offload"):
        assert engines.read_ds_config(ROOT / "ds_configs" / f"{name}.json")["bf16"] == {"enabled": False}  # no bf16
    monkeypatch.setattr(engines, "bf16_supported", lambda: True)  # as on an H100
    ds = engines.read_ds_config(ROOT / "ds_configs" / "zero2.json")
    assert ds["bf16"] == {"enabled": True} and engines.dtype_of(ds) == torch.bfloat16
    said = engines.read_ds_config(ROOT / "ds_configs" / "zero2.json", {"bf16": {"enabled": False}})
    assert said["bf16"] == {"enabled": False}                      # a precision the user says is kept


def test_contiguous_gradients_left_out_means_deepspeeds_default_on_a_gpu_and_off_on_a_cpu():
    for name in ("zero2", "zero3", "zero3_offload"):
        zero = engines.read_ds_config(ROOT / "ds_configs" / f"{name}.json")["zero_optimization"]
        assert zero["contiguous_gradients"] is torch.cuda.is_available(), name
    said = engines.read_ds_config(ROOT / "ds_configs" / "zero2.json",
                                  {"zero_optimization": {"contiguous_gradients": True}})
    assert said["zero_optimization"]["contiguous_gradients"] is True  # a value the user says is kept
    assert said["zero_optimization"]["stage"] == 2


@pytest.mark.parametrize("stage", [2, 3])
def test_contiguous_gradients_changes_no_loss_and_no_weight(demo_dir, dist_env, stage):
    """The CPU default (off) must train exactly like DeepSpeed's (on): it only skips a copy."""
    got = {}
    for contiguous in (True, False):
        patch = {"zero_optimization": {"contiguous_gradients": contiguous}}
        cfg, eng = _engine(demo_dir, stage, dist_env, ds_patch=patch)
        assert eng.zero_contiguous_gradients() is contiguous
        tok = models.load_tokenizer(cfg.model)
        batch = data.collate(data.text_samples([(demo_dir / "forget.txt").read_text()], tok, 32)[:2], tok.pad_token_id)
        losses = _train(eng, batch, 3)
        got[contiguous] = losses, _flat_weights(eng)
        eng.destroy()
    assert got[True][0] == got[False][0] and got[True][0][0] != got[True][0][2]  # the weights moved
    assert torch.equal(got[True][1], got[False][1])


def _flat_weights(eng) -> torch.Tensor:
    with checkpoint._gathered(eng):
        return torch.cat([p.detach().flatten().clone() for p in eng.module.parameters()])


def _train(eng, batch, steps: int) -> list[float]:
    batch = data.to_device(batch, eng.device)
    losses = []
    for _ in range(steps):
        loss = eng(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
        eng.backward(loss)
        eng.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("stage", [2, 3])
def test_adamw8bit_keeps_8bit_moments_steps_like_adamw_and_resumes_exactly(demo_dir, dist_env, tmp_path, stage):
    """optim.name=adamw8bit: bitsandbytes' AdamW8bit under ZeRO holds one uint8 byte per moment per
    parameter, moves the weights as fp32 AdamW does, and resumes bit-exactly from a checkpoint; a
    resume with the other optimizer is a one-line error, not a crash inside DeepSpeed."""
    from unlearn.errors import UserError

    cfg, eng = _engine(demo_dir, stage, dist_env, ["optim.name=adamw8bit", "optim.lr=1e-3"])
    tok = models.load_tokenizer(cfg.model)
    batch = data.collate(data.text_samples([(demo_dir / "forget.txt").read_text()], tok, 32)[:2], tok.pad_token_id)
    initial = _flat_weights(eng)
    _train(eng, batch, 3)
    n_params = initial.numel()
    (state,) = eng.optimizer.optimizer.state.values()     # ZeRO's one flat fp32 partition (one rank)
    assert state["state1"].dtype == state["state2"].dtype == torch.uint8
    assert state["state1"].numel() >= n_params and state["state2"].numel() >= n_params
    moved8 = _flat_weights(eng) - initial

    _, ref = _engine(demo_dir, stage, dist_env, ["optim.lr=1e-3"])
    _train(ref, batch, 3)
    moved32 = _flat_weights(ref) - initial
    ref.destroy()
    cos = torch.nn.functional.cosine_similarity(moved8, moved32, dim=0)
    if moved8.is_cuda:  # bitsandbytes' CUDA kernel: cosine 0.953 on an H200 (bitsandbytes 0.50.2, this test)
        assert moved32.abs().max() > 1e-3 and cos > 0.9, cos
    else:  # its CPU kernel dequantises the moments, updates them in fp32 and quantises them again
        assert moved32.abs().max() > 1e-3 and cos > 0.999, cos
        assert (moved8 - moved32).norm() < 0.05 * moved32.norm()

    ckpt = checkpoint.save(eng, tok, cfg, tmp_path, 3, dist_env, {"step": 3, "streams": {}})
    assert json.loads((ckpt / "meta.json").read_text())["optimizer"] == "AdamW8bit"
    straight = _train(eng, batch, 2)
    checkpoint.load_for_resume(eng, ckpt, dist_env)
    assert _train(eng, batch, 2) == straight
    eng.destroy()

    _, plain = _engine(demo_dir, stage, dist_env)
    with pytest.raises(UserError, match="optimizer=AdamW8bit, this run has optimizer=AdamW"):
        checkpoint.load_for_resume(plain, ckpt, dist_env)
    plain.destroy()


def test_zero3_sub_groups_smaller_than_the_model_train_the_same(demo_dir, dist_env, tmp_path):
    """ds_configs/zero3.json's sub_group_size bounds the fp32 gradient copy made at the optimizer step
    (1e8 elements: 0.4 GB instead of a whole 2.7b model's 10.6 GB); AdamW is elementwise, so cutting
    the partition into sub-groups leaves the weights unchanged. The optimizer state is saved per
    sub-group, so a resume with another cut is a one-line error."""
    from unlearn.errors import UserError

    assert engines.read_ds_config(ROOT / "ds_configs" / "zero3.json")["zero_optimization"]["sub_group_size"] == 10**8
    cfg, whole = _engine(demo_dir, 3, dist_env)
    tok = models.load_tokenizer(cfg.model)
    batch = data.collate(data.text_samples([(demo_dir / "forget.txt").read_text()], tok, 32)[:2], tok.pad_token_id)
    expected = _train(whole, batch, 3)
    weights = _flat_weights(whole)
    whole.destroy()
    _, cut = _engine(demo_dir, 3, dist_env, ds_patch={"zero_optimization": {"sub_group_size": 50_000}})
    assert len(cut.optimizer.fp32_partitioned_groups_flat) > 10     # the tiny model in many sub-groups
    assert _train(cut, batch, 3) == expected
    assert torch.equal(_flat_weights(cut), weights)
    ckpt = checkpoint.save(cut, tok, cfg, tmp_path, 3, dist_env, {"step": 3, "streams": {}})
    cut.destroy()
    _, other = _engine(demo_dir, 3, dist_env)
    with pytest.raises(UserError, match=r"zero3_sub_groups=\d+, this run has zero3_sub_groups=1;"):
        checkpoint.load_for_resume(other, ckpt, dist_env)
    other.destroy()


@pytest.mark.parametrize("file_keys,patch,message", [
    ({}, {"zero_optimisation": {"stage": 3}},
     "a ds.* override on '{json}' has unknown key 'ds.zero_optimisation' (DeepSpeed 0.19.8 would ignore it); "
     "did you mean 'ds.zero_optimization'?"),
    ({}, {"zero_optimization": {"offload_param": {"devicee": "cpu"}}},
     "unknown key 'ds.zero_optimization.offload_param.devicee' (DeepSpeed 0.19.8's DeepSpeedZeroConfig has no "
     "such field); did you mean 'ds.zero_optimization.offload_param.device'?"),
    ({"zero_optimization": {"stage": 2, "overlap_comms": False}}, {},
     "DeepSpeed config '{json}' has unknown key 'zero_optimization.overlap_comms' (DeepSpeed 0.19.8's "
     "DeepSpeedZeroConfig has no such field); did you mean 'zero_optimization.overlap_comm'?"),
    ({"zero_optimization": {"stage": 2}, "activation_checkpointing": {"partition_activation": True}}, {},
     "unknown key 'activation_checkpointing.partition_activation' (DeepSpeed 0.19.8 would ignore it); did you "
     "mean 'activation_checkpointing.partition_activations'?"),
    ({"zero_optimization": {"stage": 2}, "bf16": {"enabeld": False}}, {}, "did you mean 'bf16.enabled'?"),
    ({"zero_optimization": {"stage": 2}, "tensorboard": {"output_pth": "tb"}}, {},
     "unknown key 'tensorboard.output_pth' (DeepSpeed 0.19.8's DeepSpeedMonitorConfig has no such field); "
     "did you mean 'tensorboard.output_path'?"),
    ({"zero_optimization": {"stage": 2}, "elasticity": {"enabled": True}}, {},
     "sets 'elasticity', which DeepSpeed 0.19.8 no longer supports (Elastic training has been removed"),
])
def test_ds_keys_deepspeed_would_not_read_are_refused_with_the_nearest(tmp_path, file_keys, patch, message):
    """A typo in a DeepSpeed JSON or a ds.* override ran with DeepSpeed's default (ZeRO-2 for a mistyped
    zero_optimization): each is refused, with the nearest key DeepSpeed 0.19.8 reads there."""
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(file_keys or {"zero_optimization": {"stage": 2}}))
    with pytest.raises(UserError) as info:
        engines.read_ds_config(path, patch)
    assert message.format(json=path) in str(info.value)


def test_shipped_ds_configs_hold_only_keys_deepspeed_reads():
    """The valid keys come from DeepSpeed: its top-level reads include the sections we use, and every
    ds_configs/*.json passes (with the README's override examples)."""
    from unlearn.train import ds_keys

    assert {"zero_optimization", "bf16", "fp16", "zero_force_ds_cpu_optimizer", "activation_checkpointing"} <= \
        ds_keys.top_level_keys() and "zero_optimisation" not in ds_keys.top_level_keys()
    for path in sorted((ROOT / "ds_configs").glob("*.json")):
        ds = engines.read_ds_config(path, {"bf16": {"enabled": False}, "zero_optimization": {"stage": 3}})
        assert ds["zero_optimization"]["stage"] == 3, path
