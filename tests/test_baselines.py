"""AltPO's generation step, WHP's generic targets and the Task Vector, end to end on the demo's tiny OPT:
formulas on tensors, then each pipeline's files and runs (a few steps each)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import ROOT
from tests.unlearn_runs import run, scalars, weights
from unlearn import altpo, whp
from unlearn.config_io import load_config
from unlearn.errors import UserError
from unlearn.train import task_vector


def test_generic_labels_push_down_what_the_reinforced_model_raised():
    """v_generic = v_base - alpha ReLU(v_reinforced - v_base), argmax at the positions that predict a label."""
    base = torch.tensor([[[3.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 2.0]]])
    reinforced = torch.tensor([[[5.0, 2.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 4.0]]])
    labels = torch.tensor([[-100, 0, 2]])
    # position 0: generic (3 - 2, 2, 0) -> token 1; position 1: all equal -> token 0; alpha 0 keeps the base's argmax
    assert whp.generic_labels(base, reinforced, labels, 1.0).tolist() == [[-100, 1, 0]]
    assert whp.generic_labels(base, reinforced, labels, 0.0).tolist() == [[-100, 0, 0]]
    assert whp.generic_labels(base, reinforced, torch.tensor([[-100, -100, 2]]), 1.0).tolist() == [[-100, -100, 0]]


def test_task_vector_is_theta_minus_alpha_times_the_difference():
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, ffn_dim=16, num_attention_heads=2,
                    max_position_embeddings=16, word_embed_proj_dim=8)
    torch.manual_seed(0)
    model, finetuned = OPTForCausalLM(cfg), OPTForCausalLM(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    storages = len({v.data_ptr() for v in model.state_dict().values()})  # the tied lm_head shares one
    moved = task_vector.negate(model, finetuned, alpha=5.0)
    after, ft = model.state_dict(), finetuned.state_dict()
    for k, theta in before.items():
        assert torch.allclose(after[k], theta - 5.0 * (ft[k] - theta), atol=1e-6), k
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight  # tied: moved once, still tied
    assert moved == storages == len(before) - 1


def test_altpo_alternates_are_written_and_dpo_trains_on_them(demo_dir, tmp_path, dist_env):
    cfg, _ = load_config(overrides=[f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'normal.jsonl'}",
                                    "data.max_forget_samples=3"])
    out = altpo.run(cfg, str(tmp_path / "alt.jsonl"), altpo.Sampling(repeats=2, max_new_tokens=6, stop=()))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    sources = [json.loads(line) for line in (demo_dir / "normal.jsonl").read_text().splitlines()][:3]
    assert [(r["question"], r["answer"]) for r in rows] == [(s["question"], s["answer"]) for s in sources for _ in "ab"]
    assert all(r["alternate"] and r["alternate"] != r["answer"] for r in rows)
    meta = json.loads((tmp_path / "alt.jsonl.meta.json").read_text())
    assert (meta["prompts"], meta["rows"], meta["repeats"]) == (3, 6, 2)
    run_dir = run(demo_dir, tmp_path, f"data.forget={out}", "data.forget_alternate=alternate",
                  "method.forget_loss=dpo", "method.schedule=joint", "train.max_steps=2")
    losses = scalars(run_dir, "forget/loss")
    assert losses[0] == pytest.approx(20 * math.log(2), rel=1e-6) and math.isfinite(losses[1])
    with pytest.raises(UserError, match="plain text"):
        altpo.forget_pairs(load_config(overrides=[f"data.forget={demo_dir / 'forget.txt'}"])[0])
    with pytest.raises(UserError, match="--greedy writes one"):
        altpo.check(altpo.Sampling(greedy=True))


def test_whp_targets_then_training_on_them(demo_dir, tmp_path, dist_env):
    reinforced = tmp_path / "reinforced"
    run(demo_dir, tmp_path / "ft", f"data.retain={demo_dir / 'harmful.jsonl'}", f"run.export_dir={reinforced}",
        "optim.lr=3e-3", finetune=True)
    common = [f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'harmful.jsonl'}",
              "data.max_length=64", f"data.whp_targets={tmp_path / 'targets.json'}", "method.forget_loss=whp",
              f"method.whp_reinforced={reinforced}", "method.whp_alpha=2.0"]
    cfg, _ = load_config(overrides=common)
    whp.write_targets(cfg, batch_size=5)
    doc = json.loads((tmp_path / "targets.json").read_text())
    assert (doc["alpha"], doc["reinforced"], len(doc["samples"])) == (2.0, str(reinforced), 24)
    sample = doc["samples"][0]
    from unlearn import model as models
    from unlearn.data import collate
    from unlearn.sets import forget_samples

    base, tok = models.load_for_eval(str(demo_dir / "init"))
    ref, _ = models.load_for_eval(str(reinforced))
    forget = forget_samples(cfg, tok)
    batch = collate(forget[:1], tok.pad_token_id)
    with torch.no_grad():
        v_b = base(input_ids=batch["input_ids"]).logits[0, :-1]
        v_r = ref(input_ids=batch["input_ids"]).logits[0, :-1]
    expected = (v_b - 2.0 * torch.relu(v_r - v_b)).argmax(-1).tolist()
    answer = [t for t in range(1, len(sample["labels"])) if forget[0]["labels"][t] != -100]
    assert sample["input_ids"] == forget[0]["input_ids"] and [sample["labels"][t] for t in answer] == \
        [expected[t - 1] for t in answer]
    assert sum(sample["labels"][t] != forget[0]["labels"][t] for t in answer) > 0  # the targets differ from the text

    run_dir = run(demo_dir, tmp_path, *common[1:], "method.schedule=joint", "train.max_steps=2",
                  "train.global_batch_size=24", "train.micro_batch_size=24")  # both steps see the whole set
    losses, nll = scalars(run_dir, "forget/loss"), scalars(run_dir, "forget/nll")  # nll: of the text
    assert len(losses) == 2 and losses[1] < losses[0] and losses[0] != pytest.approx(nll[0])  # its own labels, learnt
    with pytest.raises(UserError, match="was made from model/reinforced/alpha"):
        run(demo_dir, tmp_path, *common[1:], "method.whp_alpha=1.0")
    with pytest.raises(UserError, match="needs data.whp_targets"):
        run(demo_dir, tmp_path, *common[1:3], "method.forget_loss=whp")


def test_task_vector_run_writes_theta_minus_alpha_difference(demo_dir, tmp_path, dist_env):
    args = [f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'harmful.jsonl'}",
            f"data.retain={demo_dir / 'normal.jsonl'}", "data.max_length=64", "train.max_steps=2",
            "train.global_batch_size=2", "train.save_engine_state=false", "optim.lr=1e-3", f"run.output_dir={tmp_path}",
            "run.name=tv", "method.task_vector_alpha=5.0"]
    cfg, patch = load_config(overrides=args)
    ds = str(ROOT / "ds_configs" / "zero2.json")
    out = task_vector.run(cfg, ds, patch, resume="", overwrite=False)
    ft = tmp_path / "tv-finetune" / "checkpoints" / "step-000002"
    theta, theta_ft, result = weights(demo_dir / "init"), weights(ft), weights(out / "checkpoints" / "step-000002")
    for k in result:
        assert torch.allclose(result[k], theta[k] - 5.0 * (theta_ft[k] - theta[k]), atol=1e-6), k
    assert any(not torch.equal(theta_ft[k], theta[k]) for k in theta)
    meta = json.loads((out / "checkpoints" / "step-000002" / "meta.json").read_text())
    assert meta["task_vector"]["alpha"] == 5.0 and meta["task_vector"]["finetuned"] == str(ft)
    assert (out / "checkpoints" / "step-000002" / "COMPLETE").is_file() and (out / "config.yaml").is_file()
    with pytest.raises(UserError, match="already exists"):  # refused before any training
        task_vector.run(cfg, ds, patch, resume="", overwrite=False)
