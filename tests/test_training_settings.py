"""The loop does what its settings say, on real single-rank DeepSpeed engines: gradient checkpointing
recomputes, the alternate schedule runs one optimizer step per phase in the right direction, and
gradient clipping bounds the gradient the optimizer applies in both phases."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.unlearn_runs import make_loop, run
from unlearn import data, losses


def _count_layer_forwards(monkeypatch) -> dict[str, int]:
    """Count the attention forwards of every decoder layer of the policies train() loads; a
    recomputation in backward runs them again. (A hook inside the layer: transformers checkpoints
    the layer's own `forward`, so patching that would switch checkpointing off.)"""
    from unlearn import model as models

    calls = {"n": 0}
    real = models.load_policy

    def load(cfg, dtype=torch.float32):
        policy = real(cfg, dtype)
        for name, module in policy.named_modules():
            if name.endswith("self_attn"):
                module.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
        return policy
    monkeypatch.setattr(models, "load_policy", load)
    return calls


# (ZeRO stage, LoRA, dropout): every stage, full and LoRA, dropout on and off
@pytest.mark.parametrize("stage,lora,dropout", [(2, False, False), (2, True, True), (3, False, True),
                                                (3, True, False)])
def test_gradient_checkpointing_recomputes_every_layer(demo_dir, dist_env, tmp_path, monkeypatch, stage, lora,
                                                       dropout):
    # one joint GA + NLL step: one policy pass (forget and retain packed together, train.pack) through
    # the demo's 4 layers; the unpacked step makes two (forget, retain)
    args = ["train.max_steps=1", "method.forget_loss=ga", "method.retain_loss=nll", "method.schedule=joint",
            f"model.lora={str(lora).lower()}", f"model.dropout={str(dropout).lower()}"]
    layers, passes = 4, 1
    calls = _count_layer_forwards(monkeypatch)
    run(demo_dir, tmp_path / "plain", *args, ds=f"zero{stage}.json")
    assert calls["n"] == passes * layers
    calls["n"] = 0
    run(demo_dir, tmp_path / "ckpt", *args, "model.gradient_checkpointing=true", ds=f"zero{stage}.json")
    assert calls["n"] == 2 * passes * layers  # each layer's forward runs again in backward


def _nll(engine, samples: list[data.Sample], pad: int) -> float:
    batch = data.to_device(data.collate(samples, pad), engine.device)
    with torch.no_grad():
        logits = engine.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return losses.nll(logits, batch["labels"]).item()


@pytest.mark.parametrize("stage", [2, 3])
def test_alternate_schedule_is_one_optimizer_step_per_phase(demo_dir, dist_env, tmp_path, stage):
    loop, state = make_loop(demo_dir, tmp_path, dist_env, stage, "method.forget_loss=ga", "method.retain_loss=nll",
                            "method.schedule=alternate", "optim.lr=1e-3")
    pad = loop.tokenizer.pad_token_id
    for step in range(4):
        name = "forget" if step % 2 == 0 else "retain"
        stream = copy.deepcopy(state.streams[name])
        samples = [getattr(loop.sets, name)[i] for i in stream.global_indices(stream.next_batch)]
        before, steps_before = _nll(loop.engine, samples, pad), loop.engine.global_steps
        metrics = loop.step(state)
        state.record_step(False)
        after = _nll(loop.engine, samples, pad)
        assert metrics["phase"] == (0.0 if name == "forget" else 1.0)
        assert f"{name}/loss" in metrics and not {"forget/loss", "retain/loss"} <= set(metrics)
        assert loop.engine.global_steps == steps_before + 1
        assert metrics[f"{name}/nll"] == pytest.approx(before, rel=1e-5)  # the loss saw this batch
        assert (after > before) if name == "forget" else (after < before), (step, name, before, after)


@pytest.mark.parametrize("stage", [2, 3])
def test_clipping_bounds_the_applied_gradient_in_both_phases(demo_dir, dist_env, tmp_path, stage):
    clip = 1e-3  # far below the tiny model's gradient norm (> 1 at lr 0)
    loop, state = make_loop(demo_dir, tmp_path, dist_env, stage, "method.forget_loss=ga",
                            "method.retain_loss=nll", "method.schedule=alternate", f"optim.grad_clip={clip}")
    inner = loop.engine.optimizer.optimizer  # the torch AdamW over ZeRO's fp32 partitions
    norms: list[float] = []
    real_step = inner.step

    def recording_step(*args, **kwargs):
        squares = sum(float(p.grad.float().pow(2).sum()) for g in inner.param_groups for p in g["params"]
                      if p.grad is not None)
        norms[-1] += squares
        return real_step(*args, **kwargs)
    inner.step = recording_step
    for _ in range(2):  # a forget step, then a retain step
        norms.append(0.0)
        metrics = loop.step(state)
        state.record_step(False)
        assert metrics["grad_norm"] > 100 * clip  # the gradient before clipping
    assert [n ** 0.5 for n in norms] == pytest.approx([clip, clip], rel=1e-3)


def _flat_weights(engine) -> torch.Tensor:
    import deepspeed

    params = list(engine.module.parameters())
    if engine.zero_optimization_stage() == 3:
        with deepspeed.zero.GatheredParameters(params):
            return torch.cat([p.detach().flatten().clone() for p in params])
    return torch.cat([p.detach().flatten().clone() for p in params])


@pytest.mark.parametrize("stage", [2, 3])
def test_separate_phase_state_gives_each_phase_its_own_adam_moments(demo_dir, dist_env, tmp_path, stage):
    """Adam's first step moves every coordinate with a gradient by lr (m/sqrt(v) = g/|g|). With
    separate moments the first retain step (step 2, after a forget step) is such a first step; with
    shared moments it is the state's second step and the forget gradient is still in it."""
    lr = 1e-3
    moved = {}
    for mode in ("separate", "shared"):
        loop, state = make_loop(demo_dir, tmp_path, dist_env, stage, "method.forget_loss=ga",
                                "method.retain_loss=nll", "method.schedule=alternate", f"optim.lr={lr}",
                                "optim.grad_clip=0", f"optim.phase_state={mode}")
        loop.step(state)  # forget
        state.record_step(False)
        before = _flat_weights(loop.engine)
        loop.step(state)  # retain
        state.record_step(False)
        delta = (_flat_weights(loop.engine) - before).abs()
        moved[mode] = delta[delta > 0]
        if mode == "separate":
            steps = [float(s["step"]) for s in loop.phases.inner.state.values()]
            assert loop.phases.active == "retain" and steps and set(steps) == {1.0}
            assert set(loop.phases.stash) == {"forget"}
    at_lr = {mode: ((d - lr).abs() < 1e-3 * lr).float().mean().item() for mode, d in moved.items()}
    # separate: a first Adam step, |update| <= lr and = lr wherever |g| >> eps (measured: 89% of the
    # coordinates that moved; the rest have gradients near eps = 1e-8); shared: 1.5%
    assert moved["separate"].numel() > 1000 and moved["separate"].max() <= lr * (1 + 1e-4)
    assert at_lr["separate"] > 0.85 and at_lr["shared"] < 0.05, at_lr


@pytest.mark.parametrize("stage", [2, 3])
def test_separate_phase_state_resumes_exactly(demo_dir, dist_env, tmp_path, stage):
    from tests.conftest import ROOT
    from unlearn.config_io import load_config
    from unlearn.train.loop import train

    args = ["method.forget_loss=ga", "method.retain_loss=nll", "method.schedule=alternate", "optim.schedule=constant",
            "optim.phase_state=separate", "train.save_engine_state=true", "train.save_every_n_steps=3",
            f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'harmful.jsonl'}",
            f"data.retain={demo_dir / 'normal.jsonl'}", "data.max_length=64", "train.micro_batch_size=2",
            "train.global_batch_size=2", "optim.lr=1e-3", f"run.output_dir={tmp_path}"]
    ds = str(ROOT / "ds_configs" / f"zero{stage}.json")
    cfg, patch = load_config(overrides=[*args, "run.name=whole", "train.max_steps=6"])
    whole = train(cfg, ds, patch)
    cfg, patch = load_config(overrides=[*args, "run.name=parts", "train.max_steps=3"])
    train(cfg, ds, patch)  # stops after step 3 (a forget step: the retain moments are stashed)
    cfg, patch = load_config(overrides=[*args, "run.name=parts", "train.max_steps=6"])
    parts = train(cfg, ds, patch, resume=True)
    from tests.unlearn_runs import weights

    a, b = weights(whole / "checkpoints" / "step-000006"), weights(parts / "checkpoints" / "step-000006")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (parts / "checkpoints" / "step-000003" / "engine" / "state_rank0.pt").is_file()


def test_unknown_phase_state_is_a_user_error_and_joint_keeps_one_state(demo_dir, dist_env, tmp_path):
    from tests.conftest import ROOT
    from unlearn.config_io import load_config
    from unlearn.errors import UserError
    from unlearn.train import engine as engines
    from unlearn.train import preflight

    cfg, _ = load_config(overrides=["optim.phase_state=both"])
    with pytest.raises(UserError, match="optim.phase_state 'both' is unknown; expected one of: shared, separate"):
        preflight.check_config(cfg, engines.read_ds_config(ROOT / "ds_configs" / "zero2.json"), 1)
    loop, state = make_loop(demo_dir, tmp_path, dist_env, 2, "method.schedule=joint", "method.retain_loss=nll")
    assert loop.cfg.optim.phase_state == "separate"  # the default
    for _ in range(2):
        loop.step(state)
        state.record_step(False)
    assert loop.phases.active == "joint" and not loop.phases.stash


def test_resume_of_a_missing_run_is_an_error_unless_auto(demo_dir, dist_env, tmp_path, capsys):
    """A mistyped run name with --resume used to train from scratch silently."""
    from tests.conftest import ROOT
    from unlearn.train.main import _resume_words, train_main

    base = ["--ds_config", str(ROOT / "ds_configs" / "zero2.json"), "--no_report",
            f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'harmful.jsonl'}",
            f"data.retain={demo_dir / 'normal.jsonl'}", "data.max_length=48", "train.max_steps=1",
            "train.micro_batch_size=2", "train.global_batch_size=2", f"run.output_dir={tmp_path}", "run.name=typo"]
    with pytest.raises(SystemExit) as exit_info:
        train_main("test", [*base, "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert err[0] == (f"error: --resume: run folder '{tmp_path / 'typo'}' does not exist; expected the run.name "
                      "of an earlier run (or --resume auto to start it when missing, as sweeps and requeues do)")
    assert not (tmp_path / "typo").exists()
    train_main("test", [*base, "--resume", "auto"])  # what sweeps and requeues pass: starts the run
    assert (tmp_path / "typo" / "checkpoints" / "step-000001" / "COMPLETE").is_file()
    train_main("test", [*base, "--resume"])  # now it exists: continues (nothing left to do at max_steps)
    assert _resume_words(["--resume", "run.name=x", "--resume=auto"]) == ["--resume", "run.name=x", "--resume-auto"]


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1e-4", "optim.lr=-0.0001; expected a positive learning rate (e.g. 2e-6)"),
    ("optim.betas=[0.9,1.5]", "optim.betas=[0.9, 1.5]; expected two numbers in [0, 1), e.g. [0.9, 0.999]"),
    ("model.lora_target_modules=[q_proj,nope]", "model.lora_target_modules ['nope'] match no module of"),
])
def test_bad_values_fail_before_the_run_folder_exists(demo_dir, dist_env, tmp_path, override, message):
    from tests.conftest import ROOT
    from unlearn.config_io import load_config
    from unlearn.errors import UserError
    from unlearn.train.loop import train

    cfg, patch = load_config(overrides=[f"model.name_or_path={demo_dir / 'init'}", "model.lora=true",
                                        f"data.forget={demo_dir / 'harmful.jsonl'}",
                                        f"data.retain={demo_dir / 'normal.jsonl'}", f"run.output_dir={tmp_path}",
                                        "run.name=bad", override])
    with pytest.raises(UserError) as info:
        train(cfg, str(ROOT / "ds_configs" / "zero2.json"), patch)
    assert message in str(info.value)
    if "lora_target" in override:  # names what would have matched
        assert "fc1, fc2, k_proj, lm_head, out_proj, q_proj, v_proj" in str(info.value)
    assert not (tmp_path / "bad").exists()


def test_a_start_that_fails_after_the_run_folder_leaves_nothing(demo_dir, dist_env, tmp_path, monkeypatch):
    from tests.conftest import ROOT
    from unlearn.config_io import load_config
    from unlearn.train import engine as engines
    from unlearn.train.loop import train

    def broken(*args, **kwargs):
        raise RuntimeError("no device memory")  # what a too-large model does at engine start-up
    monkeypatch.setattr(engines, "initialize", broken)
    args = [f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'harmful.jsonl'}",
            f"data.retain={demo_dir / 'normal.jsonl'}", f"run.output_dir={tmp_path}", "run.name=r", "train.max_steps=1"]
    cfg, patch = load_config(overrides=args)
    with pytest.raises(RuntimeError, match="no device memory"):
        train(cfg, str(ROOT / "ds_configs" / "zero2.json"), patch)
    assert not (tmp_path / "r").exists()
    monkeypatch.undo()
    assert train(cfg, str(ROOT / "ds_configs" / "zero2.json"), patch) == tmp_path / "r"  # the retry is not refused
