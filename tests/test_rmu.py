"""RMU (unlearn.rmu): the activation loss in closed form and against open-unlearning's formula, the
vector u, which parameters train on a real engine (ZeRO-2/3, LoRA), bad settings, and u across resume."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import ROOT
from tests.unlearn_runs import run, scalars, weights
from unlearn import methods, rmu
from unlearn.config import Config, MethodConfig, ModelConfig
from unlearn.errors import UserError
from unlearn.methods import Forward

RMU = ["method.forget_loss=rmu", "method.retain_loss=rmu", "method.rmu_layer=2", "method.rmu_train_layers=[1,2]"]
"""The tiny OPT has 4 layers: steer layer 2, train fc2 of layers 1 and 2 (l-1..l)."""

# Fixed tensors (B=2, T=3, D=3) for the pinned values below.
H = torch.tensor([[[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [3.0, 1.0, 1.0]],
                  [[-2.0, 0.5, 0.0], [0.25, 1.0, -1.5], [9.0, 9.0, 9.0]]])
REF = torch.tensor([[[0.0, -0.5, 1.0], [1.0, 1.0, 0.0], [2.0, 2.0, 2.0]],
                    [[-1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
TARGET = 6.0 * torch.tensor([1.0, 2.0, 2.0]) / 3.0   # c u with c = 6, u = (1, 2, 2) / 3
EVEN = torch.tensor([[True, True, False], [True, True, False]])
UNEVEN = torch.tensor([[True, True, True], [False, True, False]])


def test_activation_loss_closed_form_and_gradient_direction():
    # two labelled tokens of one sample: mean_d (h - 0)^2 = (1 + 0)/2 and (0 + 4)/2 -> mean 1.25; the
    # third token is masked (its huge value must not count, nor get a gradient)
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [100.0, -100.0]]], requires_grad=True)
    mask = torch.tensor([[True, True, False]])
    loss = rmu.activation_loss(h, torch.zeros(2), mask)
    assert loss.item() == pytest.approx(1.25, abs=1e-7)
    loss.backward()
    # dL/dh = 2 (h - t) / (D n B) = (h - t) / 2: positive where h is above the target, so a descent
    # step moves the activations toward c u; zero at the masked token
    assert torch.allclose(h.grad, torch.tensor([[[0.5, 0.0], [0.0, 1.0], [0.0, 0.0]]]))
    # at the target the loss is exactly 0
    assert rmu.activation_loss(torch.ones(1, 2, 3) * TARGET, TARGET, torch.ones(1, 2, dtype=torch.bool)).item() == 0


def test_activation_loss_matches_open_unlearning_formula():
    """open-unlearning's compute_activation_loss, evaluated once with numpy on these tensors (forget:
    target c u broadcast; retain: REF). With even token counts its value is ours; with uneven counts
    its (B,)/(B,1) broadcast gives mean(sums) x mean(1/n): 14.340277.. and 1.034722.., where the
    per-sample mean it intends (ours) is 11.871527.. and 0.885416.. (hand-checked: sample 0 of the
    retain case is (0.5 + 0.5 + 1)/3, sample 1 is (0.0625 + 1 + 2.25)/3)."""
    assert rmu.activation_loss(H, TARGET, EVEN).item() == pytest.approx(12.859375, rel=1e-6)
    assert rmu.activation_loss(H, REF, EVEN).item() == pytest.approx(0.6510416666666667, rel=1e-6)
    assert rmu.activation_loss(H, TARGET, UNEVEN).item() == pytest.approx(11.871527777777777, rel=1e-6)
    assert rmu.activation_loss(H, REF, UNEVEN).item() == pytest.approx(0.8854166666666667, rel=1e-6)


def test_control_vector_is_a_seeded_nonnegative_unit_vector():
    u = rmu.control_vector(128, seed=0)
    assert u.shape == (128,) and u.dtype == torch.float32
    assert u.norm().item() == pytest.approx(1.0, abs=1e-6) and bool((u >= 0).all())  # torch.rand, normalised
    assert torch.equal(u, rmu.control_vector(128, seed=0))
    assert not torch.allclose(u, rmu.control_vector(128, seed=1))
    torch.manual_seed(123)  # the global RNG does not enter
    assert torch.equal(u, rmu.control_vector(128, seed=0))


def test_registered_terms_read_the_hidden_states():
    cfg = MethodConfig()
    logits, labels = torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)
    h = H.clone().requires_grad_(True)
    fwd = Forward(logits, labels, hidden=rmu.Hidden(h, EVEN, REF, TARGET))
    assert methods.forget_objective("rmu").fn(fwd, cfg).item() == pytest.approx(12.859375, rel=1e-6)
    assert methods.retain_objective("rmu").fn(fwd, cfg).item() == pytest.approx(0.6510416666666667, rel=1e-6)
    assert methods.retain_objective("rmu").needs_reference and not methods.forget_objective("rmu").needs_reference
    same = Forward(logits, labels, hidden=rmu.Hidden(REF, UNEVEN, REF, TARGET))  # policy == reference
    assert methods.retain_objective("rmu").fn(same, cfg).item() == 0.0


def test_bad_rmu_settings_are_one_line_errors(demo_dir):
    from unlearn import model as models

    model_config = models.load_model_config(ModelConfig(name_or_path=str(demo_dir / "init")))

    def check(**method):
        rmu.check(Config(method=MethodConfig(forget_loss="rmu", **method)), model_config)

    with pytest.raises(UserError, match="layer 7 does not exist; expected 0-based layer numbers below the model's 4"):
        check()  # open-unlearning's layer 7 on the 4-layer demo model
    with pytest.raises(UserError, match="layer 4 does not exist"):
        check(rmu_layer=2, rmu_train_layers=(2, 4))
    with pytest.raises(UserError, match=r"rmu_train_modules \['down_proj'\] name no module .* fc2"):
        check(rmu_layer=2, rmu_train_layers=(2,), rmu_train_modules=("down_proj",))
    with pytest.raises(UserError, match="rmu_steering_coeff=0.0; expected a positive"):
        check(rmu_layer=2, rmu_train_layers=(2,), rmu_steering_coeff=0.0)
    lora = Config(model=ModelConfig(lora=True), method=MethodConfig(forget_loss="rmu", rmu_layer=2,
                                                                     rmu_train_layers=(2,)))
    with pytest.raises(UserError, match="no adapter would train; expected model.lora_target_modules to include"):
        rmu.check(lora, model_config)
    check(rmu_layer=2, rmu_train_layers=(1, 2))  # fine
    rmu.check(Config(), model_config)  # no RMU term: nothing checked


def _changed(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("ds", ["zero2.json", "zero3.json"])
def test_only_the_chosen_layers_parameters_change(demo_dir, tmp_path, dist_env, ds):
    run_dir = run(demo_dir, tmp_path, *RMU, ds=ds)
    before = weights(demo_dir / "init")
    after = weights(run_dir / "checkpoints" / "step-000003")
    after = {k: v for k, v in after.items() if k in before}  # the tied lm_head is saved only after training
    assert _changed(before, after) == {f"model.decoder.layers.{i}.fc2.{p}" for i in (1, 2) for p in ("weight", "bias")}
    forget, retain = scalars(run_dir, "forget/loss"), scalars(run_dir, "retain/loss")
    assert forget[0] > 0.01 and forget[-1] < forget[0]   # steps 1 and 3 steer layer 2 toward c u
    assert 0 < retain[0] < forget[0]                     # step 2: one forget step moved layer 2 off the reference


def test_lora_only_the_adapters_in_the_chosen_layers_train(demo_dir, tmp_path, dist_env):
    """ZeRO-3 with gradient checkpointing (the layer is tapped inside the recomputed block): LoRA's B
    starts at 0, so an adapter that never trained is still exactly 0 after 3 steps."""
    run_dir = run(demo_dir, tmp_path, *RMU, "model.lora=true", "model.lora_target_modules=[q_proj,fc2]",
                  "model.gradient_checkpointing=true", ds="zero3.json")
    after = weights(run_dir / "checkpoints" / "step-000003")
    b = {k for k in after if ".lora_B." in k}
    trained = {k for k in b if after[k].abs().sum() > 0}
    assert trained == {f"base_model.model.model.decoder.layers.{i}.fc2.lora_B.weight" for i in (1, 2)}
    assert len(b) == 8  # q_proj and fc2 in 4 layers


def test_resume_uses_the_saved_vector(demo_dir, tmp_path, dist_env, monkeypatch):
    """u is saved with each checkpoint and a resumed run takes it from there: a checkpoint whose u was
    replaced continues with the replacement, not with a fresh draw from train.seed."""
    from unlearn import manifest
    from unlearn.config_io import load_config
    from unlearn.train import loop as training

    made = []
    steering_for = training.steering_for
    monkeypatch.setattr(training, "steering_for", lambda *a: made.append(steering_for(*a)) or made[-1])
    overrides = ["train.save_engine_state=true", "train.save_every_n_steps=2"]
    run_dir = run(demo_dir, tmp_path, *RMU, *overrides, "train.max_steps=2")
    state_file = run_dir / "checkpoints" / "step-000002" / "engine" / "state_rank0.pt"
    saved = torch.load(state_file)["rmu"]["u"]
    assert torch.equal(saved, rmu.control_vector(128, seed=0))
    planted = torch.flip(saved, [0])
    state = torch.load(state_file)
    state["rmu"]["u"] = planted
    torch.save(state, state_file)
    manifest.write(state_file.parents[1])  # a deliberate edit: the checkpoint's checksums follow it

    cfg, patch = load_config(overrides=[f"model.name_or_path={demo_dir / 'init'}",
                                        f"data.forget={demo_dir / 'harmful.jsonl'}",
                                        f"data.retain={demo_dir / 'normal.jsonl'}", "data.max_length=64",
                                        "train.micro_batch_size=2", "train.global_batch_size=2",
                                        "optim.lr=1e-3", f"run.output_dir={tmp_path}", "run.name=run",
                                        *RMU, *overrides, "train.max_steps=4"])
    training.train(cfg, str(ROOT / "ds_configs" / "zero2.json"), patch, resume=True)
    assert torch.equal(made[-1].u, planted)
    assert torch.equal(torch.load(run_dir / "checkpoints" / "step-000004" / "engine" / "state_rank0.pt")["rmu"]["u"],
                       planted)


def test_demo_rmu_config_runs_as_shipped(demo_dir, tmp_path, dist_env):
    """configs/demo_rmu.yaml as shipped, on this session's demo assets and scaled down to 2 steps."""
    from unlearn.config_io import load_config
    from unlearn.train.loop import train

    cfg, patch = load_config([str(ROOT / "configs" / "demo_rmu.yaml")], [
        f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'forget.txt'}",
        f"data.retain={demo_dir / 'retain.txt'}", "train.max_steps=2", "train.log_every_n_steps=1", "train.save_engine_state=false",
        f"run.output_dir={tmp_path}"])
    assert (cfg.method.forget_loss, cfg.method.retain_loss, cfg.method.schedule) == ("rmu", "rmu", "joint")
    run_dir = train(cfg, str(ROOT / "ds_configs" / "zero2.json"), patch)
    forget, retain = scalars(run_dir, "forget/loss"), scalars(run_dir, "retain/loss")
    assert retain[0] == 0.0 and retain[1] > 0  # the policy equals the reference before the first step
    assert forget[1] < forget[0]


def test_a_bad_rmu_layer_fails_before_the_run_folder_exists(demo_dir, tmp_path, dist_env):
    with pytest.raises(UserError, match="layer 7 does not exist"):
        run(demo_dir, tmp_path, "method.forget_loss=rmu")  # open-unlearning's layer 7; the demo has 4
    assert not (tmp_path / "run").exists()
