"""The packed step (unlearn.train.packing) against the unpacked one it replaces: the same losses and
gradients, for every packable objective, on the demo's tiny OPT with shared prompts."""

from __future__ import annotations

import pytest
import torch

from unlearn import data, methods
from unlearn.config import MethodConfig
from unlearn.train import packing
from unlearn.train import step as train

TEMPLATE = "### Question: {prompt}\n ### Answer: {response}"


def test_pack_shares_prompts_and_reads_only_labelled_positions():
    # a, b: prompt [5, 6] with answers [7, 8] and [9]; c: plain text [3, 4, 5] (no prompt to share)
    a = {"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]}
    b = {"input_ids": [5, 6, 9], "labels": [-100, -100, 9]}
    c = {"input_ids": [3, 4, 5], "labels": [3, 4, 5]}
    p = packing.pack([a, b, c], pad_id=1, dtype=torch.float32)
    # unit (a, b) = 2 + 2 + 1 = 5 tokens is the widest; c (3 tokens) needs a row of its own
    assert p.batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 4, 5, 1, 1]]
    assert p.batch["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 0, 0]]
    allowed = (p.batch["attention_mask"][:, 0] == 0).int().tolist()
    assert allowed[0] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]]
    assert allowed[1] == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]
    # read cells: a at columns 1 (-> 7) and 2 (-> 8); b at column 1 (-> 9); c at columns 0, 1
    assert p.keep.tolist() == [[1, 2], [0, 1]]  # columns, per row
    assert p.reads == [[0, 1], [0], [2, 3]] and p.targets == [[7, 8], [9], [4, 5]]
    assert p.real_tokens == 10 and p.positions == 10


def _models(demo_dir):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(demo_dir / "init", dtype=torch.float32).train()
    ref = AutoModelForCausalLM.from_pretrained(demo_dir / "init", dtype=torch.float32).eval()
    with torch.no_grad():
        ref.lm_head.weight.mul_(1.1)  # a reference that differs from the policy
        for p in policy.parameters():  # and a policy whose answer log-probs are not uniform noise
            p.add_(0.02 * torch.randn_like(p))
    return policy, ref


def _samples(demo_dir, tok):
    from unlearn import sources

    rows = sources.load_rows(str(demo_dir / "harmful.jsonl"), "train", "", "")
    pairs = sources.qa_pairs(rows, sources.detect_format(rows, "harmful"), "harmful")[:2]
    forget = [data.qa_sample(p, a, tok, TEMPLATE, 64) for p, a in pairs]
    answers = ["Paris.", "Water boils at one hundred degrees at sea level.", "No.", "Seven days make a week."]
    mismatch = [data.qa_sample(s["prompt"], a, tok, TEMPLATE, 64) for s in forget for a in answers[:3]]
    retain = [data.qa_sample("How is bread made at home?", "Flour, water, salt and time.", tok, TEMPLATE, 64),
              data.qa_sample("Why?", "Because it rained all night long.", tok, TEMPLATE, 64)]
    return {"forget": forget, "mismatch": mismatch, "retain": retain}


@pytest.mark.parametrize("forget,retain", [(f, "kl") for f in ("ga", "npo", "simnpo", "wga", "satimp", "undial", "ceu")]
                         + [("ga", "nll")])
def test_packed_losses_and_gradients_equal_the_unpacked_step(demo_dir, forget, retain):
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(demo_dir / "init")
    policy, ref = _models(demo_dir)
    samples = _samples(demo_dir, tok)
    objs = {"forget": methods.FORGET[forget], "mismatch": methods.RETAIN["random_mismatch"],
            "retain": methods.RETAIN[retain]}
    assert {o.name for o in objs.values()} <= packing.PACKABLE
    cfg = MethodConfig()

    def unpacked() -> dict[str, torch.Tensor]:
        out = {}
        for name, obj in objs.items():
            batch = data.collate(samples[name], tok.pad_token_id)
            with torch.no_grad():
                ref_logits = train.forward_logits(ref, batch) if obj.needs_reference else None
            out[name] = obj.fn(methods.Forward(train.forward_logits(policy, batch), batch["labels"], ref_logits), cfg)
        return out

    def packed() -> dict[str, torch.Tensor]:
        def ref_logits(b, keep):
            with torch.no_grad():
                return train.forward_logits(ref, b, keep)

        fwds, tokens, positions = packing.forwards(lambda b, keep: train.forward_logits(policy, b, keep), ref_logits,
                                                   samples, {n: o.needs_reference for n, o in objs.items()},
                                                   tok.pad_token_id, torch.float32, torch.device("cpu"))
        assert tokens == sum(len(s["input_ids"]) for v in samples.values() for s in v)
        assert positions < tokens  # each forget prompt runs once for its 1 + 3 answers
        return {name: obj.fn(fwds[name], cfg) for name, obj in objs.items()}

    results = []
    for fn in (unpacked, packed):
        policy.zero_grad()
        losses = fn()
        sum(losses.values()).backward()
        results.append((losses, torch.cat([p.grad.flatten() for p in policy.parameters()])))
    (want, want_grad), (got, got_grad) = results
    for name in objs:
        assert got[name].item() == pytest.approx(want[name].item(), abs=1e-5, rel=1e-6), name
    assert want_grad.abs().max() > 1e-3
    assert (got_grad - want_grad).abs().max() <= 1e-5 * max(1.0, want_grad.abs().max().item())


PAPER = ["method.forget_loss=ga", "method.retain_loss=kl", "method.mismatch_weight=1", "method.schedule=joint",
         "data.num_random_answers=5"]


@pytest.mark.parametrize("ds,extra", [
    ("zero2.json", []),
    pytest.param("zero3.json", ["model.lora=true"], marks=pytest.mark.slow),
])
def test_packed_training_run_equals_the_unpacked_one(demo_dir, tmp_path, dist_env, ds, extra):
    """The paper's objective (GA + 5 random mismatch + KL, joint) through train() on a real engine:
    every logged loss of 3 steps equal with train.pack true and false."""
    from tests.unlearn_runs import run, scalars

    series = {}
    for pack in (True, False):
        run_dir = run(demo_dir, tmp_path / str(pack), *PAPER, *extra, f"train.pack={str(pack).lower()}", ds=ds)
        series[pack] = {t: scalars(run_dir, t) for t in ("forget/loss", "mismatch/loss", "retain/loss", "padding")}
    for tag in ("forget/loss", "mismatch/loss", "retain/loss"):
        assert len(series[True][tag]) == 3
        assert series[True][tag] == pytest.approx(series[False][tag], abs=1e-5), tag
    assert series[False]["retain/loss"][-1] > 0  # KL moved off 0: the steps changed the policy
    # five random answers share each forget prompt: fewer positions than real tokens, no padding
    assert all(p < 0 for p in series[True]["padding"]) and all(p >= 0 for p in series[False]["padding"])
