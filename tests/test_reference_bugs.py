"""One test per defect of the paper's reference code, each proving ours does not have it.

1. random-mismatch loss on question tokens (its answer start was the length of a dict, i.e. 2)
2. padding (pad = EOS) diluting or masking the loss
3. a "KL" that was a cross-entropy over every position, computed in fp16 (inf/NaN)
4. a step cap that is not exact
5. a forget set read in the same order every epoch
6. a forget-loss ceiling that never fired (it compared the negative ascent loss with a positive bound)
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests.unlearn_runs import run, scalars
from unlearn import data, losses
from unlearn.config import Config, DataConfig
from unlearn.methods import RETAIN, Forward


@pytest.fixture(scope="module")
def tok(demo_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_dir / "init")


def test_1_random_mismatch_loss_is_on_answer_tokens_only(demo_dir, tok):
    cfg = Config(data=DataConfig(forget=str(demo_dir / "harmful.jsonl"), retain=str(demo_dir / "normal.jsonl"),
                                 max_length=64, num_random_answers=5))
    forget = data.build_samples(cfg.data.forget, "forget", tok, cfg.data)
    sampler = data.random_answers(cfg, tok, forget)
    samples = sampler.samples(forget[:2], [0, 1], step=0)
    for s in samples:
        labelled = [t for t, y in zip(s["input_ids"], s["labels"]) if y != data.IGNORE]
        answer = tok.decode(labelled)[1:-len(tok.eos_token)]
        assert answer in sampler.pool
        assert len(labelled) == len(tok(" " + answer, add_special_tokens=False)["input_ids"]) + 1
        question = tok(f"### Question: {s['prompt']}\n ### Answer:")["input_ids"]
        assert s["input_ids"][:len(question)] == question
        assert all(y == data.IGNORE for y in s["labels"][:len(question)])  # the reference trained from token 2
    batch = data.collate(samples, tok.pad_token_id)
    logits = torch.randn(*batch["input_ids"].shape, len(tok))
    before = RETAIN["random_mismatch"].fn(Forward(logits, batch["labels"]), None)
    logits[:, :len(question) - 1] += 100 * torch.randn_like(logits[:, :len(question) - 1])
    assert RETAIN["random_mismatch"].fn(Forward(logits, batch["labels"]), None).item() == pytest.approx(before.item())


def test_2_padding_with_pad_equal_eos_neither_dilutes_nor_masks(tok):
    a = data.qa_sample("Where?", "North of the mill.", tok, DataConfig().prompt_template, 64)
    long_unlabelled = {"input_ids": [5] * 60, "labels": [data.IGNORE] * 60}
    alone = data.collate([a], pad_id=tok.eos_token_id)
    padded = data.collate([a, long_unlabelled], pad_id=tok.eos_token_id)  # `a` gets 40+ EOS pads
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, padded["input_ids"].shape[1], len(tok), generator=g)
    n = alone["input_ids"].shape[1]
    assert losses.nll(logits[:1, :n], alone["labels"]).item() == pytest.approx(
        losses.nll(logits, padded["labels"]).item(), rel=1e-6)
    eos_labels = (padded["labels"][0] == tok.eos_token_id).sum().item()
    assert eos_labels == 1  # the answer's own EOS is trained; the 40+ pad EOS tokens are not


def test_3_kl_is_a_true_masked_kl_and_finite_from_fp16_logits():
    B, T, V = 2, 6, 50
    g = torch.Generator().manual_seed(0)
    policy = (torch.randn(B, T, V, generator=g) * 400).half()  # fp16 logits with a wide range
    ref = (policy.float() + torch.randn(B, T, V, generator=g) * 50).half()
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :3] = losses.IGNORE

    def reference_code_kl(p_logits, q_logits):  # what the reference computed, in the logits' dtype
        prob_p, prob_q = F.softmax(p_logits, -1), F.softmax(q_logits, -1)
        return -(prob_p * torch.log(prob_q + 1e-12)).sum(-1).mean()

    assert not torch.isfinite(reference_code_kl(ref, policy))
    ours = losses.kl_to_reference(policy, ref, labels)
    assert torch.isfinite(ours) and ours.dtype == torch.float32
    assert ours.item() == pytest.approx(losses.kl_to_reference(policy.float(), ref.float(), labels).item(), rel=1e-6)
    same = losses.kl_to_reference(policy, policy.clone(), labels)
    assert same.item() == 0.0 and reference_code_kl(policy.float(), policy.float()).item() > 0  # CE != KL
    masked = policy.clone()
    masked[:, :2] = 0  # positions 0-1 predict question tokens 1-2: masked
    assert losses.kl_to_reference(masked, ref, labels).item() == pytest.approx(ours.item(), rel=1e-6)


def test_4_and_5_exact_step_cap_and_forget_set_reshuffled_each_epoch(demo_dir, tmp_path, dist_env, monkeypatch):
    """7 joint steps of 2 samples over a 4-sample forget set: 3.5 epochs, each in a new order."""
    taken: dict[int, list[int]] = {}

    class Recording(data.BatchStream):
        def take(self, micro_batch, rank, world):
            out = super().take(micro_batch, rank, world)
            taken.setdefault(self.seed, []).extend(i for group in out for i in group)
            return out

    monkeypatch.setattr(data, "BatchStream", Recording)
    run_dir = run(demo_dir, tmp_path, "method.forget_loss=ga", "method.retain_loss=nll", "method.schedule=joint",
                  "data.max_forget_samples=4", "train.max_steps=7", "train.micro_batch_size=1",
                  "train.global_batch_size=2", "train.save_every_n_steps=3", "train.seed=11")
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step-*"))] == \
        ["step-000003", "step-000006", "step-000007"]
    assert json.loads((run_dir / "checkpoints" / "step-000007" / "meta.json").read_text())["step"] == 7
    lr = scalars(run_dir, "lr")
    assert len(lr) == 7 and lr == sorted(lr, reverse=True) and lr[-1] < lr[0] / 5  # decays to ~0 at the cap
    forget = taken[11]  # the forget stream is seeded with train.seed
    assert len(forget) == 14
    epochs = [forget[0:4], forget[4:8], forget[8:12]]
    assert all(sorted(e) == [0, 1, 2, 3] for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1, f"same order every epoch: {epochs}"


def test_6_forget_loss_ceiling_stops_the_run(demo_dir, tmp_path, dist_env):
    ceiling = 7.5  # nats/token; the random model starts near log(741) = 6.6
    run_dir = run(demo_dir, tmp_path, "method.forget_loss=ga", "method.retain_loss=none",
                  f"method.max_forget_loss={ceiling}", "train.max_steps=40", "optim.lr=5e-3",
                  "optim.schedule=constant")
    nll, ga = scalars(run_dir, "forget/nll"), scalars(run_dir, "forget/loss")
    assert nll[-1] > ceiling and all(x <= ceiling for x in nll[:-1]) and len(nll) < 40
    assert all(x < 0 < ceiling for x in ga)  # the reference's `loss >= ceiling` on these never fires
    (last,) = sorted((run_dir / "checkpoints").glob("step-*"))
    assert last.name == f"step-{len(nll):06d}" and (last / "COMPLETE").is_file()
    assert math.isfinite(nll[-1])
