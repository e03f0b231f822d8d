"""Methods on real single-rank DeepSpeed engines: the reference model's wiring, KL at step 0, presets."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, dropout_model
from tests.unlearn_runs import run, scalars, weights
from unlearn import methods
from unlearn import model as models
from unlearn.config import MethodConfig
from unlearn.config_io import load_config
from unlearn.errors import UserError

PRESETS = ["harmful_opt1.3b.yaml", "harmful_opt2.7b.yaml", "copyright_opt1.3b_finetune.yaml",
           "copyright_opt1.3b.yaml", "demo_harmful.yaml"]


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}



def test_full_reference_is_a_frozen_copy_that_never_changes(demo_dir, tmp_path, dist_env, references):
    model_dir = dropout_model(demo_dir, tmp_path / "model")
    run_dir = run(demo_dir, tmp_path, f"model.name_or_path={model_dir}", "method.forget_loss=npo",
                  "method.retain_loss=kl", "method.schedule=joint")
    (ref,) = references
    policy = ref.policy.module
    assert ref.model is not None and ref.model is not policy
    policy_ptrs = {p.data_ptr() for p in policy.parameters()}
    assert not policy_ptrs & {p.data_ptr() for p in ref.model.parameters()}  # no shared storage
    assert not any(p.requires_grad for p in ref.model.parameters())
    init = weights(demo_dir / "init")
    after_ref = _params(ref.model)
    for name, value in init.items():
        assert torch.equal(after_ref[name], value), f"reference weight {name} changed"
    trained = weights(run_dir / "checkpoints" / "step-000003")
    assert any(not torch.equal(trained[k], init[k]) for k in init), "the policy did not train"
    assert policy.training and models.zero_dropout(policy) == 0  # model.dropout=false: every p is 0
    assert scalars(run_dir, "retain/loss")[0] == 0.0  # KL to the reference is exactly 0 at step 0
    assert scalars(run_dir, "forget/loss")[0] == pytest.approx(20 * math.log(2), rel=1e-6)  # NPO, beta 0.1
    assert scalars(run_dir, "retain/loss")[-1] > 0.0


def test_zero3_reference_is_its_own_sharded_engine(demo_dir, tmp_path, dist_env, references):
    import deepspeed

    run_dir = run(demo_dir, tmp_path, "method.forget_loss=ga", "method.retain_loss=kl", "method.schedule=joint",
                  ds="zero3.json")
    (ref,) = references
    assert isinstance(ref.model, deepspeed.DeepSpeedEngine) and ref.model is not ref.policy
    assert ref.model.client_optimizer is None and ref.model.lr_scheduler is None  # inference only
    init = weights(demo_dir / "init")
    with deepspeed.zero.GatheredParameters(list(ref.model.module.parameters())):
        after_ref = _params(ref.model.module)
    assert all(torch.equal(after_ref[k], v) for k, v in init.items() if k in after_ref)
    assert len([k for k in init if k in after_ref]) >= len(init) - 1  # (tied lm_head may be absent)
    assert scalars(run_dir, "retain/loss")[0] == 0.0


def test_forget_terms_move_the_forget_nll_up(demo_dir, tmp_path, dist_env):
    """ga, npo and simnpo all push the forget answers' NLL up on the same data and steps."""
    for name in ("ga", "npo", "simnpo"):
        # SimNPO at its default beta 4.5 saturates on a random model (NLL 6.6 nats/token: its weight
        # on the log-prob gradient is 2 sigmoid(-4.5 x 6.6) ~ 1e-13); beta 0.1 shows the direction
        run_dir = run(demo_dir, tmp_path / name, f"method.forget_loss={name}", "method.retain_loss=none",
                      "optim.lr=3e-3", "optim.schedule=constant", "method.simnpo_beta=0.1")
        nll = scalars(run_dir, "forget/nll")
        assert len(nll) == 3 and nll[-1] > nll[0] + 0.01, (name, nll)


def test_unknown_objectives_are_user_errors():
    with pytest.raises(UserError, match="forget_loss 'orpo'"):
        methods.forget_objective("orpo")
    with pytest.raises(UserError, match="mismatch_weight"):
        methods.retain_objective("random_mismatch")
    assert methods.forget_objective("none") is None
    assert methods.needs_reference(MethodConfig(forget_loss="npo", retain_loss="none"))


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_parse(preset):
    cfg, _ = load_config([str(ROOT / "configs" / preset)])
    assert cfg.method.forget_loss in methods.FORGET or cfg.method.forget_loss == "none"


def test_harmful_presets_carry_the_paper_values():
    for preset in ("harmful_opt1.3b.yaml", "harmful_opt2.7b.yaml"):
        cfg, _ = load_config([str(ROOT / "configs" / preset)])
        m, o, t, d = cfg.method, cfg.optim, cfg.train, cfg.data
        assert (m.forget_loss, m.forget_weight, m.retain_loss, m.retain_weight, m.mismatch_weight, m.schedule) == \
            ("ga", 0.5, "kl", 1.0, 1.0, "joint")
        assert (o.lr, o.schedule, o.warmup_steps, t.max_steps, t.global_batch_size, d.num_random_answers) == \
            (2e-6, "linear", 0, 1000, 2, 5)
        assert d.truthfulqa_fractions == (0.7, 0.1, 0.2) and d.truthfulqa_part == "train"
        assert cfg.model.name_or_path in ("facebook/opt-1.3b", "facebook/opt-2.7b")
        assert (d.forget, d.retain) == ("PKU-Alignment/PKU-SafeRLHF", "truthfulqa/truthful_qa")
    stage1, _ = load_config([str(ROOT / "configs" / "copyright_opt1.3b_finetune.yaml")])
    assert (stage1.model.lora, stage1.model.lora_r, stage1.model.lora_alpha, stage1.optim.lr, stage1.train.epochs) == \
        (True, 16, 32, 2e-4, 3.0)


def test_demo_harmful_preset_runs_on_the_demo_sets(demo_dir, tmp_path, dist_env):
    """configs/demo_harmful.yaml with its .cache/demo paths pointed at the test's demo folder."""
    from unlearn.train.loop import train

    cfg, patch = load_config([str(ROOT / "configs" / "demo_harmful.yaml")], [
        f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'harmful.jsonl'}",
        f"data.retain={demo_dir / 'normal.jsonl'}", "train.max_steps=2", "train.save_engine_state=false",
        f"run.output_dir={tmp_path}", "train.log_every_n_steps=1", f"run.oracle={demo_dir / 'init'}"])
    run_dir = train(cfg, str(ROOT / "ds_configs" / "zero2.json"), patch, overwrite=True)
    assert len(scalars(run_dir, "mismatch/loss")) == 2 and scalars(run_dir, "retain/loss")[0] == 0.0
    assert Path(run_dir, "checkpoints", "step-000002", "COMPLETE").is_file()


def test_alternate_schedule_ratio_and_joint():
    from unlearn.train.schedule import phase_at

    m = MethodConfig(schedule="alternate", forget_steps_per_cycle=2, retain_steps_per_cycle=1)
    assert [phase_at(s, m) for s in range(6)] == ["forget", "forget", "retain"] * 2
    assert {phase_at(s, MethodConfig(schedule="joint")) for s in range(4)} == {"joint"}


def test_harmful_preset_runs_on_real_local_data(demo_dir, shared_data, tmp_path, dist_env):
    """The 1.3b preset with the hub swapped for local files in the same formats (XSTest pairs in
    PKU-SafeRLHF columns, TruthfulQA's CSV) and the tiny model: every preset key works at run time."""
    from unlearn.train.loop import train

    cfg, patch = load_config([str(ROOT / "configs" / "harmful_opt1.3b.yaml")], [
        f"model.name_or_path={demo_dir / 'init'}",
        f"data.forget={shared_data / 'xstest' / 'xstest_harmful_safe_pairs.jsonl'}", "data.forget_revision=",
        f"data.retain={shared_data / 'truthfulqa' / 'TruthfulQA.csv'}", "data.retain_subset=", "data.max_length=256",
        "train.max_steps=2", "train.save_engine_state=false", "train.log_every_n_steps=1",
        f"run.output_dir={tmp_path}"])
    run_dir = train(cfg, str(ROOT / "ds_configs" / "zero2.json"), patch, overwrite=True)
    assert scalars(run_dir, "retain/loss")[0] == 0.0
    assert len(scalars(run_dir, "mismatch/loss")) == 2 and 0 < max(scalars(run_dir, "lr")) <= 2e-6


def test_mismatch_batch_cut_into_length_chunks_gives_the_one_pass_loss(demo_dir, tmp_path, dist_env, monkeypatch):
    """data.mismatch_pass_cost=0 runs every distinct length in its own pass; the chunks' losses
    weighted by answer tokens give the one-pass loss, so losses and gradient norms of 3 steps agree.
    (The unpacked step, train.pack=false: the packed one runs every term in one pass.)"""
    import json

    from unlearn.train import loop as train_mod

    words = "the key opens a small door near the river where people meet at night".split()
    retain = tmp_path / "ragged.jsonl"  # answers of 1..24 words: chunks of unequal token counts
    retain.write_text("".join(json.dumps({"question": f"Question {n}?", "answer": " ".join(words * 2)[:6 * n]}) + "\n"
                              for n in range(1, 25)))
    passes: list[str] = []
    chunk_term = train_mod.Loop._chunk_term

    def counting(self, obj, batch):
        passes.append(obj.name)
        return chunk_term(self, obj, batch)

    monkeypatch.setattr(train_mod.Loop, "_chunk_term", counting)
    series = {}
    for cost in (0, 10**9):
        passes.clear()
        run_dir = run(demo_dir, tmp_path / str(cost), "method.forget_loss=ga", "method.retain_loss=none",
                      "method.mismatch_weight=1", "method.schedule=joint", "data.num_random_answers=5",
                      f"data.retain={retain}", f"data.mismatch_pass_cost={cost}", "train.pack=false")
        series[cost] = {tag: scalars(run_dir, tag) for tag in ("mismatch/loss", "grad_norm", "padding")}
        per_step = passes.count("random_mismatch") / 3
        assert passes.count("ga") == 3 and (per_step > 3 if cost == 0 else per_step == 1), (cost, passes)
    padding = {cost: series[cost].pop("padding") for cost in series}
    assert max(padding[0]) < min(padding[10**9]), padding  # the logged padding falls with the cut
    for tag, values in series[0].items():
        assert values == pytest.approx(series[10**9][tag], rel=1e-5), tag


@pytest.mark.parametrize("name", ["wga", "satimp", "undial", "ceu"])
def test_new_forget_losses_train_on_a_real_engine(demo_dir, tmp_path, dist_env, name):
    """Each loss through the loop on a real ZeRO-2 engine (joint with NLL): finite, logged, weights move."""
    run_dir = run(demo_dir, tmp_path, f"method.forget_loss={name}", "method.retain_loss=nll", "method.schedule=joint",
                  "train.max_steps=2")
    losses_ = scalars(run_dir, "forget/loss")
    assert len(losses_) == 2 and all(math.isfinite(x) for x in losses_)
    init, trained = weights(demo_dir / "init"), weights(run_dir / "checkpoints" / "step-000002")
    assert any(not torch.equal(trained[k], init[k]) for k in init)


def test_undial_and_kl_over_every_position_through_the_loop(demo_dir, tmp_path, dist_env):
    """undial_positions=all and kl_positions=all on a real engine (padded QA batches): the logged losses
    equal the definitions computed here from the models' full logits, real tokens only."""
    import json

    from unlearn import data
    from unlearn.distributed import env_from_os
    from unlearn.sets import load_sets, make_streams

    rows = [json.loads(line) for line in (demo_dir / "normal.jsonl").read_text().splitlines()]
    qa = tmp_path / "qa.jsonl"  # answers cut to 4 lengths, so every batch is padded
    qa.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"][:12 + 14 * (i % 4)]}) + "\n"
                          for i, r in enumerate(rows)))
    extra = [f"data.forget={qa}", f"data.retain={qa}", "method.forget_loss=undial", "method.undial_positions=all",
             "method.retain_loss=kl", "method.kl_positions=all", "method.schedule=joint", "train.max_steps=2",
             "train.save_every_n_steps=1", "data.group_by_length=false"]
    run_dir = run(demo_dir, tmp_path, *extra)
    cfg, _ = load_config(overrides=[f"model.name_or_path={demo_dir / 'init'}", "data.max_length=64",
                                    "train.global_batch_size=2", *extra])
    init, tok = models.load_for_eval(str(demo_dir / "init"))
    step1, _ = models.load_for_eval(str(run_dir / "checkpoints" / "step-000001"))
    sets = load_sets(cfg, tok, env_from_os())
    streams = make_streams(cfg, sets)

    def batch(name: str, step: int):
        b = data.collate([getattr(sets, name)[i] for i in streams[name].global_indices(step)], tok.pad_token_id)
        return b, b["attention_mask"].sum(-1).tolist()

    @torch.no_grad()
    def undial(policy, b, lengths) -> float:
        z, z_ref = policy(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, \
            init(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        ces = []
        for i, n in enumerate(lengths):
            for t in range(n - 1):  # every position followed by a real token
                target = z_ref[i, t].clone()
                if b["labels"][i, t + 1] != -100:
                    target[b["labels"][i, t + 1]] -= 10.0
                ces.append(-(torch.softmax(target, -1) * torch.log_softmax(z[i, t], -1)).sum())
        return torch.stack(ces).mean().item()

    @torch.no_grad()
    def kl(policy, b, lengths) -> float:
        lp = torch.log_softmax(policy(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, -1)
        lr = torch.log_softmax(init(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, -1)
        return torch.stack([(lr[i, t].exp() * (lr[i, t] - lp[i, t])).sum()
                            for i, n in enumerate(lengths) for t in range(n)]).mean().item()

    forget, retain = scalars(run_dir, "forget/loss"), scalars(run_dir, "retain/loss")
    assert forget[0] == pytest.approx(undial(init, *batch("forget", 0)), rel=1e-5)
    assert forget[1] == pytest.approx(undial(step1, *batch("forget", 1)), rel=1e-5)
    assert retain[0] == 0.0 and retain[1] == pytest.approx(kl(step1, *batch("retain", 1)), rel=1e-4)
    assert sum(max(batch(n, s)[1]) > min(batch(n, s)[1]) for n in ("forget", "retain") for s in (0, 1)) >= 2  # padded
