"""Non-finite losses and gradients never reach the weights (real single-rank DeepSpeed engines);
too many in a row stop the run with the last good checkpoint intact, and the stop names as last good
only a checkpoint with finite weights saved outside the non-finite run; the forget-loss ceiling stops
a run cleanly. NaNs are injected with forward hooks on the real model, or by a learning rate of 1e8."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import ROOT
from tests.unlearn_runs import loop_overrides as _overrides
from tests.unlearn_runs import make_loop as _loop
from unlearn import model as models
from unlearn import runs
from unlearn.config_io import load_config
from unlearn.errors import EXIT_DIVERGED
from unlearn.train import guards
from unlearn.train import loop as training
from unlearn.train.main import train_main


def _weights(engine) -> list[torch.Tensor]:
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params) if engine.zero_optimization_stage() == 3 else _null():
        return [p.detach().float().clone() for p in params]


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _nan_logits_on(engine, calls: set[int]):
    """Forward hook: the output logits are NaN on the chosen forward calls (0-based)."""
    count = {"n": 0}

    def hook(module, args, output):
        n = count["n"]
        count["n"] += 1
        if n in calls:
            output.logits = output.logits * float("nan")
        return output
    return engine.module.register_forward_hook(hook)


@pytest.mark.parametrize("stage,bf16,accum,optim", [(2, False, 1, "adamw"), (2, False, 2, "adamw"),
                                                    (2, True, 1, "adamw"), (3, False, 1, "adamw"),
                                                    (1, False, 2, "adamw"), (2, True, 1, "adamw8bit")])
def test_nonfinite_loss_skips_the_whole_step(demo_dir, dist_env, tmp_path, stage, bf16, accum, optim):
    # global batch 2 = micro 1 x accum 2 when accum=2: the NaN hits only the FIRST micro-batch
    extra = (f"optim.name={optim}",) + (("train.micro_batch_size=1",) if accum == 2 else ())
    loop, state = _loop(demo_dir, tmp_path, dist_env, stage, *extra, bf16=bf16)
    loop.step(state)  # one good step first: AdamW momentum would move weights on a zero-gradient step
    before = _weights(loop.engine)
    handle = _nan_logits_on(loop.engine, {0})
    metrics = loop.step(state)
    handle.remove()
    assert metrics["skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(_weights(loop.engine), before)), "NaN step changed weights"
    assert state.streams["retain"].next_batch + state.streams["forget"].next_batch == 2  # data consumed
    metrics = loop.step(state)  # the counters stay consistent: the next step is a normal one
    assert metrics["skipped"] == 0.0 and torch.isfinite(torch.tensor(metrics["grad_norm"]))
    after = _weights(loop.engine)
    assert all(torch.isfinite(w).all() for w in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("stage", [2, 3])
def test_nonfinite_gradient_with_finite_loss_is_skipped(demo_dir, dist_env, tmp_path, stage):
    loop, state = _loop(demo_dir, tmp_path, dist_env, stage)
    loop.step(state)
    before = _weights(loop.engine)
    embed = loop.engine.module.get_input_embeddings().weight
    handle = embed.register_hook(lambda g: g * float("inf"))  # the loss stays finite, one gradient is not
    metrics = loop.step(state)
    handle.remove()
    assert metrics["skipped"] == 1.0 and torch.isfinite(torch.tensor(metrics[next(k for k in metrics if k.endswith("/loss"))]))
    assert all(torch.equal(a, b) for a, b in zip(_weights(loop.engine), before))


@pytest.mark.parametrize("stage", [2, 3])
def test_lr_schedule_ends_at_max_steps_whatever_was_skipped(demo_dir, dist_env, tmp_path, stage):
    """DeepSpeed holds its scheduler on a skipped step; the loop advances it, so a run with skips
    applies the same LR at every step as a clean run and ends the linear decay at max_steps (10)."""
    applied = {}
    for label, bad in (("clean", set()), ("skips", {2, 5, 6})):
        loop, state = _loop(demo_dir, tmp_path, dist_env, stage, "optim.schedule=linear", "optim.lr=1e-3")
        lrs = []
        for step in range(10):
            handle = _nan_logits_on(loop.engine, {0}) if step in bad else None
            metrics = loop.step(state)
            if handle:
                handle.remove()
            assert metrics["skipped"] == (1.0 if step in bad else 0.0)
            state.record_step(metrics["skipped"] > 0)
            lrs.append(metrics["lr"])
        applied[label] = lrs + [loop.engine.get_lr()[0]]
    assert applied["skips"] == applied["clean"]
    assert applied["clean"][0] == pytest.approx(1e-3) and applied["clean"][-1] == pytest.approx(0.0, abs=1e-12)


def test_poison_makes_every_reached_gradient_nan():
    w = torch.nn.Parameter(torch.tensor([1.0, 0.0, -2.0]))
    guards.poison((w * torch.tensor([0.0, 3.0, 1.0])).sum()).backward()
    assert torch.isnan(w.grad).all()  # even where the local derivative is 0


def _poison_model(monkeypatch, calls: set[int] | None):
    """Policies loaded by train() get NaN logits on the chosen forward calls (None = every call)."""
    real = models.load_policy

    def load(cfg, dtype=torch.float32):
        model = real(cfg, dtype)
        count = {"n": 0}

        def hook(module, args, output):
            count["n"] += 1
            if calls is None or count["n"] - 1 in calls:
                output.logits = output.logits * float("nan")
            return output
        model.register_forward_hook(hook)
        return model
    monkeypatch.setattr(models, "load_policy", load)


def test_run_stops_after_max_nonfinite_steps_and_keeps_last_good_checkpoint(
        demo_dir, dist_env, tmp_path, monkeypatch, capsys):
    _poison_model(monkeypatch, calls=set(range(3, 100)))  # steps 1-3 fine, every later step NaN
    argv = ["--ds_config", str(ROOT / "ds_configs" / "zero2.json"), "--no_report",
            *_overrides(demo_dir, tmp_path, "run.name=nan", "train.max_steps=20", "train.save_every_n_steps=2",
                        "train.max_nonfinite_steps=3", "train.log_every_n_steps=100")]
    with pytest.raises(SystemExit) as exit_info:
        train_main("test", argv)
    assert exit_info.value.code == EXIT_DIVERGED
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "3 non-finite steps in a row up to step 6" in errors[0]
    assert "Traceback" not in err and err.count("step skipped") == 3
    run = tmp_path / "runs" / "nan"
    done = runs.complete_checkpoints(run)
    # steps 4-6 were skipped (weights untouched); the save at step 4 holds the step-3 weights
    assert [p.name for p in done] == ["step-000002", "step-000004"]
    assert json.loads((done[-1] / "meta.json").read_text())["skipped_steps"] == 1
    # step-4 was saved inside the non-finite run (its step was skipped): the last good one is step-2
    assert errors[0].endswith("(lower optim.lr or check the data)") and f"last good checkpoint: {done[0]};" in errors[0]
    # logged at every skipped step despite log_every=100; "skipped" is the fraction since the last log
    assert _scalars(run / "tb", "skipped") == {4: 0.25, 5: 1.0, 6: 1.0}
    assert _scalars(run / "tb", "skipped_steps") == {4: 1.0, 5: 2.0, 6: 3.0}


@pytest.mark.parametrize("lr, last_good, finite", [("1e8", "step-000001", True), ("1e39", "none", False)])
def test_divergence_names_a_last_good_checkpoint_with_finite_weights_outside_the_nonfinite_run(
        demo_dir, dist_env, tmp_path, capsys, lr, last_good, finite):
    """Step 1 applies lr x ~1 to every weight (AdamW): at 1e8 they stay finite, at 1e39 they become inf;
    steps 2-4 are then non-finite. Saved at every step, step-2 and step-3 lie inside that run."""
    argv = ["--ds_config", str(ROOT / "ds_configs" / "zero2.json"), "--no_report",
            *_overrides(demo_dir, tmp_path, "run.name=lr", f"optim.lr={lr}", "train.max_steps=20",
                        "train.save_every_n_steps=1", "train.max_nonfinite_steps=3", "train.log_every_n_steps=100")]
    with pytest.raises(SystemExit) as exit_info:
        train_main("test", argv)
    assert exit_info.value.code == EXIT_DIVERGED
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    run = tmp_path / "runs" / "lr"
    good = runs.step_dir(run, 1) if last_good != "none" else "none"
    assert len(errors) == 1 and f"3 non-finite steps in a row up to step 4 (train.max_nonfinite_steps=3); last good " \
                                f"checkpoint: {good};" in errors[0]
    metas = [json.loads((p / "meta.json").read_text()) for p in runs.complete_checkpoints(run)]
    assert [(m["step"], m["nonfinite_in_row"], m["weights_finite"]) for m in metas] == [
        (1, 0, finite), (2, 1, finite), (3, 2, finite)]


def test_forget_loss_ceiling_stops_cleanly(demo_dir, dist_env, tmp_path, capsys):
    cfg, ds_patch = load_config(overrides=_overrides(
        demo_dir, tmp_path, "run.name=ceiling", "train.max_steps=20", "method.max_forget_loss=0.5",
        "train.log_every_n_steps=100"))
    run = training.train(cfg, str(ROOT / "ds_configs" / "zero2.json"), ds_patch)
    err = capsys.readouterr().err
    # a random model's forget NLL (about log V) is far above 0.5: the ceiling stops it at step 1
    assert "stopped early at step 1: forget NLL" in err and "exceeded method.max_forget_loss=0.5" in err
    assert [p.name for p in runs.complete_checkpoints(run)] == ["step-000001"]
    assert set(_scalars(run / "tb", "forget/nll")) == {1}


def _scalars(logdir, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)} if tag in acc.Tags()["scalars"] else {}
