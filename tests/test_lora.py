"""LoRA (peft) and an 8-bit base (bitsandbytes) on real single-rank engines, fine-tune and unlearn."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.conftest import ROOT
from tests.unlearn_runs import run, scalars, weights
from unlearn import data
from unlearn import model as models
from unlearn.config import ModelConfig
from unlearn.config_io import load_config
from unlearn.errors import UserError


@pytest.fixture(autouse=True)
def _quiet_bitsandbytes():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*MatMul8bitLt.*")
        warnings.filterwarnings("ignore", message=".*Merge lora module to 8-bit.*")
        yield


def _batch(demo_dir, tok) -> dict[str, torch.Tensor]:
    from unlearn.config import DataConfig

    samples = data.build_samples(str(demo_dir / "harmful.jsonl"), "forget", tok, DataConfig(max_length=64))
    return data.collate(samples[:4], tok.pad_token_id)


def test_lora_trains_only_adapters_and_the_reference_is_the_base(demo_dir, tmp_path, dist_env, references):
    run_dir = run(demo_dir, tmp_path, "model.lora=true", "model.lora_target_modules=q_proj,v_proj,fc1",
                  "method.forget_loss=npo", "method.retain_loss=kl", "method.schedule=joint", "optim.lr=1e-2")
    (ref,) = references
    assert ref.model is None  # no copy: the policy with its adapters switched off
    engine = ref.policy
    peft_model = engine.module
    init = weights(demo_dir / "init")
    state = peft_model.state_dict()
    lora = {k: v for k, v in state.items() if "lora_" in k}
    assert lora and all(any(m in k for m in ("q_proj", "v_proj", "fc1")) for k in lora)
    assert not any("k_proj.lora" in k for k in lora)
    for key, value in state.items():  # every base weight is bit-identical to the initial model
        if "lora_" in key:
            continue
        name = key.replace("base_model.model.", "").replace(".base_layer", "")
        name = "model.decoder.embed_tokens.weight" if name == "lm_head.weight" else name  # tied
        assert torch.equal(value.cpu(), init[name]), f"base weight {key} changed under LoRA"
    assert any(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at 0: it trained

    tok = models.load_tokenizer(ModelConfig(name_or_path=str(demo_dir / "init")))
    batch = _batch(demo_dir, tok)
    fresh, _ = models.load_for_eval(str(demo_dir / "init"))
    with torch.no_grad():
        base_logits = fresh(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        batch = data.to_device(batch, engine.device)
        policy_logits = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.cpu()
    assert torch.allclose(ref.logits(batch).cpu(), base_logits, atol=1e-5)
    assert not torch.allclose(policy_logits, base_logits, atol=1e-3)
    assert scalars(run_dir, "retain/loss")[0] == 0.0 and scalars(run_dir, "forget/loss")[0] == pytest.approx(
        20 * torch.log(torch.tensor(2.0)).item(), rel=1e-5)  # NPO at step 0 = (2/beta) log 2, beta 0.1

    adapter = run_dir / "checkpoints" / "step-000003"
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "model.safetensors").exists()
    reloaded, _ = models.load_for_eval(str(adapter))
    with torch.no_grad():
        again = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(again, policy_logits, atol=1e-5)


def test_8bit_lora_finetune_saves_an_adapter_that_reloads_and_unlearning_starts_from_it(demo_dir, tmp_path,
                                                                                      dist_env):
    """Stage 1 (8-bit base + LoRA fine-tune, exported adapter) -> stage 2 (8-bit + LoRA unlearning
    from the exported adapter, merged onto its base at load)."""
    export = tmp_path / "stage1"
    stage1 = run(demo_dir, tmp_path / "ft", "model.lora=true", "model.load_in_8bit=true",
                 f"data.retain={demo_dir / 'forget.txt'}", f"run.export_dir={export}", "optim.lr=1e-2",
                 finetune=True)
    nll = scalars(stage1, "retain/nll")
    assert len(nll) == 3 and all(torch.isfinite(torch.tensor(nll)))
    assert (export / "adapter_config.json").is_file()
    adapter = weights(export)
    assert adapter and all("lora_" in k for k in adapter)
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)
    reloaded, _ = models.load_for_eval(str(export))
    assert models.is_peft(reloaded)

    stage2 = run(demo_dir, tmp_path / "ul", f"model.name_or_path={export}", "model.lora=true",
                 "model.load_in_8bit=true", "method.forget_loss=ga", "method.retain_loss=kl",
                 "method.mismatch_weight=1", "method.schedule=joint")
    assert scalars(stage2, "retain/loss")[0] == 0.0
    assert (stage2 / "checkpoints" / "step-000003" / "adapter_config.json").is_file()


def test_unsupported_combinations_are_refused_before_any_work(demo_dir, tmp_path):
    from unlearn.train.loop import train

    def attempt(ds: str, *overrides: str):
        cfg, patch = load_config(overrides=[f"model.name_or_path={demo_dir / 'init'}", f"run.output_dir={tmp_path}",
                                            *overrides])
        train(cfg, str(ROOT / "ds_configs" / ds), patch)

    with pytest.raises(UserError, match="needs model.lora=true"):
        attempt("zero2.json", "model.load_in_8bit=true")
    with pytest.raises(UserError, match="ZeRO-3"):
        attempt("zero3.json", "model.load_in_8bit=true", "model.lora=true")
    assert not (tmp_path / "run").exists()


def test_bad_target_modules_name_the_key(demo_dir):
    with pytest.raises(UserError, match="lora_target_modules"):
        models.load_policy(ModelConfig(name_or_path=str(demo_dir / "init"), lora=True,
                                       lora_target_modules=("no_such_proj",)))


def test_policy_trains_without_dropout_unless_asked(demo_dir, tmp_path):
    """Training mode always (gradient checkpointing needs it); dropout 0.1 in the weights' config
    acts only with model.dropout=true (LoRA's own dropout likewise)."""
    from dataclasses import replace

    from tests.conftest import dropout_model

    folder = dropout_model(demo_dir, tmp_path / "model")
    ids = torch.tensor([[5, 9, 14, 3, 22, 7, 11, 4]])
    for lora in (False, True):
        cfg = ModelConfig(name_or_path=str(folder), lora=lora, lora_dropout=0.5)
        policy = models.load_policy(cfg)
        assert policy.training
        assert torch.equal(policy(input_ids=ids).logits, policy(input_ids=ids).logits)
        noisy = models.load_policy(replace(cfg, dropout=True))
        assert noisy.training
        assert not torch.equal(noisy(input_ids=ids).logits, noisy(input_ids=ids).logits)
    assert policy.config.dropout == 0.1  # the saved config keeps its own values


def test_stage2_adapter_on_a_stage1_adapter_evaluates_as_the_model_that_was_trained(demo_dir, tmp_path, dist_env,
                                                                                   monkeypatch):
    """Stage 1 (LoRA fine-tune, exported adapter) -> stage 2 (new LoRA on the merged stage-1 model): the
    stage-2 checkpoint names the stage-1 adapter as its base, and what evaluation loads from it gives
    the training engine's NLL on the same batch (not the raw base's)."""
    import json

    from unlearn.eval import before_after
    from unlearn.train import engine as engines

    export = tmp_path / "stage1"
    run(demo_dir, tmp_path / "ft", "model.lora=true", f"data.retain={demo_dir / 'forget.txt'}",
        f"run.export_dir={export}", "optim.lr=3e-2", "train.max_steps=6", finetune=True)
    made = []
    real = engines.initialize
    monkeypatch.setattr(engines, "initialize", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    stage2 = run(demo_dir, tmp_path / "ul", f"model.name_or_path={export}", "model.lora=true",
                 "method.forget_loss=ga", "method.retain_loss=nll", "optim.lr=1e-2")
    ckpt = stage2 / "checkpoints" / "step-000003"
    assert json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"] == str(export.resolve())
    tok = models.load_tokenizer(ModelConfig(name_or_path=str(export)))
    samples = data.text_samples([(demo_dir / "retain.txt").read_text()], tok, 32)[:6]
    trained = before_after.mean_nll(made[0].module, tok, samples)
    evaluated, _ = models.load_for_eval(str(ckpt))
    assert before_after.mean_nll(evaluated, tok, samples) == pytest.approx(trained, abs=1e-5)
    raw_base, _ = models.load_for_eval(str(demo_dir / "init"))
    assert abs(before_after.mean_nll(raw_base, tok, samples) - trained) > 0.1  # stage 1 moved the model


def test_copyright_demo_configs_run_both_stages(demo_dir, tmp_path, dist_env):
    """configs/copyright_demo_finetune.yaml then configs/copyright_demo.yaml as shipped, with their
    .cache paths pointed at the test's texts and 2 steps each (the scale-down)."""
    from unlearn.config import FINETUNE_DEFAULTS
    from unlearn.train.loop import train

    book, other, base = demo_dir / "forget.txt", demo_dir / "retain.txt", tmp_path / "base"
    cfg, patch = load_config([str(ROOT / "configs" / "copyright_demo_finetune.yaml")], [
        f"model.name_or_path={demo_dir / 'init'}", f"data.retain={book},{other}", "train.max_steps=2",
        f"run.output_dir={tmp_path}", f"run.export_dir={base}", "train.save_engine_state=false"],
        defaults=FINETUNE_DEFAULTS)
    train(cfg, str(ROOT / "ds_configs" / "zero2.json"), patch)
    assert (base / "COMPLETE").is_file() and not models.is_adapter(str(base))
    cfg, patch = load_config([str(ROOT / "configs" / "copyright_demo.yaml")], [
        f"model.name_or_path={base}", f"data.forget={book}", f"data.retain={other}", "train.max_steps=2",
        f"run.output_dir={tmp_path}", "train.log_every_n_steps=1", "train.save_engine_state=false",
        f"run.oracle={demo_dir / 'init'}"])
    run_dir = train(cfg, str(ROOT / "ds_configs" / "zero2.json"), patch)
    assert scalars(run_dir, "retain/loss")[0] == 0.0  # KL to the stage-1 model: adapters off = the reference
    assert (run_dir / "checkpoints" / "step-000002" / "adapter_config.json").is_file()
