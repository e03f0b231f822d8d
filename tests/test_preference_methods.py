"""IdkNLL, DPO/IdkDPO and PDU through the loop on real single-rank DeepSpeed engines: alternate answers,
bad input, PDU's lambda logged, moved by its rule and restored on resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import ROOT
from tests.unlearn_runs import dpo_forget_file, run, scalars, weights
from unlearn import alternates
from unlearn import model as models
from unlearn.config_io import load_config
from unlearn.distributed import env_from_os
from unlearn.errors import UserError
from unlearn.sets import load_sets


def _sets(demo_dir, *overrides):
    cfg, _ = load_config(overrides=[f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'harmful.jsonl'}",
                                    f"data.retain={demo_dir / 'normal.jsonl'}", "data.max_length=64", *overrides])
    tok = models.load_tokenizer(cfg.model)
    return cfg, tok, load_sets(cfg, tok, env_from_os())


def _answer(tok, sample) -> str:
    return tok.decode([t for t, y in zip(sample["input_ids"], sample["labels"]) if y != -100],
                      skip_special_tokens=True).strip()


def test_idk_samples_keep_the_prompt_and_draw_from_the_answers_file(demo_dir, tmp_path):
    idk = tmp_path / "idk.txt"
    idk.write_text('I do not know.\n\n"No idea, sorry."\n{"answer": "Ask someone else."}\n')
    cfg, tok, sets = _sets(demo_dir, "method.forget_loss=idknll", f"data.idk_answers={idk}")
    forget = sets.forget[:6]
    alt = sets.alternate.samples(forget, list(range(6)), step=3)
    for f, a in zip(forget, alt):
        n = f["labels"].index(next(y for y in f["labels"] if y != -100))  # prompt tokens of the forget sample
        assert a["input_ids"][:n] == f["input_ids"][:n] and a["prompt"] == f["prompt"]
        assert _answer(tok, a) in {"I do not know.", "No idea, sorry.", "Ask someone else."}
    assert alt == sets.alternate.samples(forget, list(range(6)), step=3)  # seeded by (seed, step, index)
    draws = {_answer(tok, sets.alternate.samples(forget[:1], [0], step=s)[0]) for s in range(20)}
    assert len(draws) == 3  # a fresh draw each step


def test_text_blocks_become_prefix_prompts_with_idk_continuations(demo_dir, tmp_path):
    from unlearn.eval.before_after import probes

    idk = tmp_path / "idk.txt"
    idk.write_text("I do not know.\n")
    cfg, tok, sets = _sets(demo_dir, "method.forget_loss=idknll", f"data.idk_answers={idk}",
                           f"data.forget={demo_dir / 'forget.txt'}", "data.text_prompt_tokens=32")
    block = sets.forget[0]
    assert len(block["input_ids"]) == 64 and block["labels"][:32] == [-100] * 32
    assert block["labels"][32:] == block["input_ids"][32:]  # the continuation stays the forget answer
    (alt,) = sets.alternate.samples([block], [0], step=0)
    assert alt["input_ids"][:32] == block["input_ids"][:32] and alt["labels"][:32] == [-100] * 32
    assert _answer(tok, alt) == "I do not know." and alt["input_ids"][-1] == tok.eos_token_id
    assert len(probes([block])[0].prompt_ids) == 32  # the verbatim probe's split is the same


def test_dpo_alternates_come_from_the_named_column(demo_dir, tmp_path):
    table = dpo_forget_file(demo_dir, tmp_path / "dpo.jsonl")
    cfg, tok, sets = _sets(demo_dir, "method.forget_loss=dpo", f"data.forget={table}", "data.forget_alternate=alternate")
    rows = {r["question"]: r["alternate"] for r in map(json.loads, table.read_text().splitlines())}
    alt = sets.alternate.samples(sets.forget, list(range(len(sets.forget))), step=0)
    assert [_answer(tok, a) for a in alt] == [rows[f["prompt"]] for f in sets.forget]


def test_default_idk_file_absent_falls_back_to_the_built_in_answers(demo_dir, tmp_path, monkeypatch, capsys):
    demo = demo_dir.resolve()
    monkeypatch.chdir(tmp_path)  # ../shared/data/lexicons/... does not exist from here
    cfg, tok, sets = _sets(demo, "method.forget_loss=idkdpo")
    assert sets.alternate.idk == list(alternates.BUILTIN_IDK)
    assert "built-in answers" in capsys.readouterr().out
    with pytest.raises(UserError, match="data.idk_answers 'nope.txt' does not exist"):
        _sets(demo, "method.forget_loss=idknll", "data.idk_answers=nope.txt")


def test_shared_idk_file_is_the_default(demo_dir, shared_data):
    assert alternates.DEFAULT_IDK_FILE == "../shared/data/lexicons/tofu_idontknow.jsonl"
    answers = alternates.read_answers(str(shared_data / "lexicons" / "tofu_idontknow.jsonl"))
    assert len(answers) == 100 and answers[0] == "I'm not certain about that."


@pytest.mark.parametrize("overrides, message", [
    (["method.forget_loss=dpo", "data.forget_alternate=alternate", "data.forget={demo}/forget.txt"],
     "reads alternate answers from a column, but data.forget .* is plain text"),
    (["method.forget_loss=idknll", "data.forget={demo}/forget.txt", "data.text_prompt_tokens=0"],
     "data.text_prompt_tokens=0; expected >= 1"),
    (["method.forget_loss=dpo"], "needs data.forget_alternate"),
    (["method.forget_loss=dpo", "data.forget_alternate=nope"], r"lacks columns \['nope'\]"),
])
def test_alternate_answers_bad_input_is_one_line(demo_dir, overrides, message):
    with pytest.raises(UserError, match=message):
        _sets(demo_dir, *(o.format(demo=demo_dir) for o in overrides))


@pytest.mark.parametrize("overrides, message", [
    (["method.forget_loss=pdu"], "needs method.pdu_eps"),
    (["method.forget_loss=pdu", "method.pdu_eps=0.3", "method.retain_loss=none"], "expected nll or kl"),
    (["method.forget_loss=dpo", "method.dpo_beta=0"], "method.dpo_beta=0.0; expected a positive"),
])
def test_method_settings_checked_before_the_run_folder(demo_dir, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        run(demo_dir, tmp_path, *overrides)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["idknll", "dpo", "idkdpo", "pdu"])
def test_new_forget_losses_train_on_a_real_engine(demo_dir, tmp_path, dist_env, name):
    """Each loss through the loop (alternate schedule: forget, retain, forget) on a real ZeRO-2 engine."""
    extra = {"dpo": [f"data.forget={dpo_forget_file(demo_dir, tmp_path / 'dpo.jsonl')}", "data.forget_alternate=alternate"],
             "pdu": ["method.pdu_eps=1.0"]}.get(name, [])
    run_dir = run(demo_dir, tmp_path, f"method.forget_loss={name}", *extra)
    losses_ = scalars(run_dir, "forget/loss")
    assert len(losses_) == 2 and all(math.isfinite(x) for x in losses_)
    if name in ("dpo", "idkdpo"):
        assert losses_[0] == pytest.approx(20 * math.log(2), rel=1e-6)  # policy = reference at step 0
        assert losses_[1] < losses_[0]
    init, trained = weights(demo_dir / "init"), weights(run_dir / "checkpoints" / "step-000003")
    assert any(not torch.equal(trained[k], init[k]) for k in init)


@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_pdu_lambda_follows_its_rule_and_is_restored_on_resume(demo_dir, dist_env, tmp_path, stage):
    from unlearn.train.loop import train

    args = ["method.forget_loss=pdu", "method.pdu_eps=3.0", "method.pdu_eta=2.0", "method.pdu_warmup_epochs=0",
            "method.retain_weight=0.5", "method.schedule=joint", "optim.schedule=constant",
            "train.save_engine_state=true", "train.save_every_n_steps=3", f"model.name_or_path={demo_dir / 'init'}",
            f"data.forget={demo_dir / 'harmful.jsonl'}", f"data.retain={demo_dir / 'normal.jsonl'}",
            "data.max_length=64", "train.micro_batch_size=2", "train.global_batch_size=2", "optim.lr=1e-3",
            "train.log_every_n_steps=1", f"run.output_dir={tmp_path}"]
    ds = str(ROOT / "ds_configs" / f"zero{stage}.json")
    cfg, patch = load_config(overrides=[*args, "run.name=whole", "train.max_steps=6"])
    whole = train(cfg, ds, patch)
    lam, retain = scalars(whole, "pdu/lambda"), scalars(whole, "retain/loss")
    expected = [0.5]
    for loss in retain[:-1]:
        expected.append(max(0.0, expected[-1] + 2.0 * (loss - 3.0)))
    assert lam == pytest.approx(expected, rel=1e-6) and len(set(lam)) == 6  # it moves every step
    meta = json.loads((whole / "checkpoints" / "step-000003" / "meta.json").read_text())
    assert json.dumps(meta).count("pdu_lambda") >= 1

    cfg, patch = load_config(overrides=[*args, "run.name=parts", "train.max_steps=3"])
    train(cfg, ds, patch)
    cfg, patch = load_config(overrides=[*args, "run.name=parts", "train.max_steps=6"])
    parts = train(cfg, ds, patch, resume=True)
    assert scalars(parts, "pdu/lambda") == pytest.approx(lam, rel=1e-6)  # step 4 uses step 3's lambda, not 0.5
    a, b = weights(whole / "checkpoints" / "step-000006"), weights(parts / "checkpoints" / "step-000006")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pdu_lambda_per_micro_batch_moves_once_per_micro_batch(demo_dir, dist_env, tmp_path):
    """pdu_update=micro_batch at gradient accumulation 2: lambda moves by each micro-batch's retain loss, so
    (retain losses above eps, no projection) by 2 eta (mean - eps) per step, where `step` moves eta (mean - eps)."""
    series = {}
    for update in ("micro_batch", "step"):
        run_dir = run(demo_dir, tmp_path / update, "method.forget_loss=pdu", "method.pdu_eps=0.5", "method.pdu_eta=2.0",
                      "method.pdu_warmup_epochs=0", "method.retain_weight=0.5", "method.schedule=joint",
                      f"method.pdu_update={update}", "train.micro_batch_size=1", "train.max_steps=4")
        series[update] = (scalars(run_dir, "pdu/lambda"), scalars(run_dir, "retain/loss"))
    for update, moves in (("micro_batch", 2), ("step", 1)):
        lam, retain = series[update]
        assert min(retain) > 0.5
        expected = [0.5]
        for loss in retain[:-1]:
            expected.append(expected[-1] + moves * 2.0 * (loss - 0.5))
        assert lam == pytest.approx(expected, rel=1e-6)


def test_new_methods_sweep_and_each_planned_config_passes_preflight(tmp_path):
    """A grid over the new methods plans; each run's written config passes the checks the train job runs first."""
    import yaml

    from unlearn.config_io import load_config as load
    from unlearn.sweep.grid import load_sweep, plan
    from unlearn.train import engine as engines
    from unlearn.train import preflight

    doc = {"name": "m", "output_dir": str(tmp_path), "base": {"train": {"max_steps": 4}, "method": {"pdu_eps": 0.3}},
           "axes": {"method.forget_loss": ["idknll", "dpo", "idkdpo", "pdu"], "method.schedule": ["alternate", "joint"]}}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(doc))
    pts = plan(load_sweep(tmp_path / "grid.yaml"))
    ds = engines.read_ds_config(ROOT / "ds_configs" / "zero3.json", None)
    for p in pts:
        cfg, _ = load(config_files=[str(tmp_path / "m" / "configs" / f"{p.name}.yaml")])
        assert cfg.method == p.config.method and cfg.method.pdu_eps == 0.3
        preflight.check_config(engines.resolve_micro_batch(cfg, 2), ds, 2)
    assert len(pts) == 8


@pytest.mark.slow
def test_idkdpo_with_lora_under_zero3_compares_against_adapters_off(demo_dir, tmp_path, dist_env):
    """LoRA's reference is the policy with adapters off: equal at step 0 (loss 2/beta log 2), apart after."""
    run_dir = run(demo_dir, tmp_path, "method.forget_loss=idkdpo", "model.lora=true", "method.schedule=joint",
                  "model.lora_target_modules=[q_proj,v_proj,fc1]", ds="zero3.json")
    losses_ = scalars(run_dir, "forget/loss")
    assert losses_[0] == pytest.approx(20 * math.log(2), rel=1e-6) and losses_[-1] < losses_[0] - 0.01
    assert (run_dir / "checkpoints" / "step-000003" / "adapter_config.json").is_file()
