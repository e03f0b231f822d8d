"""Each method's preset (configs/methods/<name>.yaml) against open-unlearning's loss on the same random batch.

Every `_ou_*` function below is open-unlearning's formula (d3d7cf9: src/trainer/utils.py and
src/trainer/unlearn/*.py) written afresh from its code: the reductions, masks and shifts it uses, not our
functions. Their compute_loss is gamma x forget + alpha x retain with the values of their
configs/trainer/<Name>.yaml (THEIRS). Ours is what the joint schedule sums for the preset:
forget_weight x forget term + retain_weight x retain term, each a registered objective of unlearn.methods
fed as the loop feeds it (every position's logits and the token mask where a term reads all positions).
The batches have no padding, where theirs averages pad positions too (documented in unlearn.methods).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import ROOT
from unlearn import methods, rmu
from unlearn.config import MethodConfig
from unlearn.config_io import load_config
from unlearn.methods import Forward
from unlearn.train.dual import RetainDual

B, T, V = 3, 9, 128  # V >= 100: their UNDIAL indexes the vocabulary with the label -100
PROMPTS = (2, 3, 4)  # question tokens per sequence (labels -100), the rest is answer; no padding

THEIRS = {  # (gamma, alpha, method args) of open-unlearning's configs/trainer/*.yaml
    "ga": (1.0, 0.0, {}), "graddiff": (1.0, 1.0, {}), "npo": (1.0, 1.0, {"beta": 0.1}),
    "simnpo": (0.125, 1.0, {"beta": 4.5, "delta": 0.0}), "wga": (1.0, 1.0, {"beta": 1.0}),
    "satimp": (0.1, 1.0, {"beta1": 5.0, "beta2": 1.0}), "undial": (1.0, 0.0, {"beta": 10.0}),
    "ceu": (1.0, 0.0, {}), "dpo": (1.0, 1.0, {"beta": 0.1}), "idkdpo": (1.0, 1.0, {"beta": 0.1}),
    "altpo": (1.0, 1.0, {"beta": 0.1}), "pdu": (1.0, 1.0, {}), "rmu": (1.0, 1.0, {"steering_coeff": 2.0}),
}


def _batch(seed: int, prompts=PROMPTS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits, ref = torch.randn(B, T, V, generator=g) * 2, torch.randn(B, T, V, generator=g) * 2
    labels = torch.randint(0, V, (B, T), generator=g)
    for b, n in enumerate(prompts):
        labels[b, :n] = -100
    for logit in (logits, ref):  # both models know the answers (p ~ 0.5): the regime unlearning starts in
        logit[:, :-1].scatter_add_(2, labels[:, 1:].clamp(min=0).unsqueeze(-1), torch.full((B, T - 1, 1), 7.0))
    return {"logits": logits, "ref": ref, "labels": labels}


def preset(name: str) -> MethodConfig:
    return load_config([str(ROOT / "configs" / "methods" / f"{name}.yaml")])[0].method


# ----------------------------------------------------------------------------- open-unlearning's formulas

def _ou_nll(logits, labels):
    """The HF causal-LM loss their GradDiff reads (outputs.loss): token mean over shifted labels."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)


def _ou_batch_nll(logits, labels):
    """compute_batch_nll: per-sequence sum of the shifted cross-entropy."""
    ce = F.cross_entropy(logits[:, :-1].transpose(-1, -2), labels[:, 1:], ignore_index=-100, reduction="none")
    return ce.sum(-1)


def _ou_dpo(win, lose, beta):
    """compute_dpo_loss; `win` None for NPO. Each side: (logits, ref logits, labels)."""
    win_ratio = 0.0 if win is None else -(_ou_batch_nll(win[0], win[2]) - _ou_batch_nll(win[1], win[2]))
    lose_ratio = -(_ou_batch_nll(lose[0], lose[2]) - _ou_batch_nll(lose[1], lose[2]))
    return -2 / beta * F.logsigmoid(beta * (win_ratio - lose_ratio)).mean()


def _ou_simnpo(logits, labels, beta, delta):
    loss = _ou_batch_nll(logits, labels) / (labels != -100).sum(-1) - delta
    return -F.logsigmoid(beta * loss).mean() * 2 / beta


def _ou_weighted(logits, labels, beta1, beta2=None):
    """compute_wga_loss (beta2 None) / compute_satimp_loss."""
    lm = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100,
                         reduction="none")
    weight = (-lm).exp().detach() ** beta1
    if beta2 is not None:
        weight = weight * (1 - (-lm).exp().detach()) ** beta2
    return -(weight * lm)[labels[:, 1:].reshape(-1) != -100].mean()


def _ou_undial(logits, ref, labels, beta, index_wrap=False):
    """compute_undial_loss: CE to softmax(ref - beta onehot(label)) at every shifted position, mean over
    all of them. Their one-hot scatter indexes with the label -100 at unlabelled positions, which lowers
    vocabulary entry V-100 there (`index_wrap`); without it those positions keep the reference as is."""
    shift_labels, shift_ref = labels[:, 1:], ref[:, :-1]
    mask = torch.zeros_like(shift_ref)
    b, t = torch.meshgrid(torch.arange(B), torch.arange(T - 1), indexing="ij")
    keep = torch.ones_like(shift_labels, dtype=torch.bool) if index_wrap else shift_labels != -100
    mask[b[keep], t[keep], shift_labels[keep]] = 1.0
    soft = F.softmax(shift_ref - mask * beta, dim=-1)
    return F.cross_entropy(logits[:, :-1].reshape(-1, V), soft.reshape(-1, V), reduction="none").mean()


def _ou_ceu(logits, labels, ignore_first=1):
    valid = labels != -100
    labels = labels.masked_fill((valid.cumsum(-1) <= ignore_first) & valid, -100)
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    keep = shift_labels != -100
    target = shift_logits[keep].detach().clone().scatter(-1, shift_labels[keep].unsqueeze(-1), float("-inf"))
    return F.cross_entropy(shift_logits[keep], F.softmax(target, dim=-1))


def _ou_kl(logits, ref):
    """compute_kl_divergence: log-softmax over (B*T, V), KL 'batchmean' = sum / (B*T), every position."""
    return F.kl_div(F.log_softmax(logits, -1).view(-1, V), F.log_softmax(ref, -1).view(-1, V),
                    reduction="batchmean", log_target=True)


def _ou_pdu_forget(logits, labels):
    """PDU.compute_loss's forget term: (max - mean)^2 of every position's logits, masked by its own label."""
    flat = logits.reshape(-1, V)
    loss = (flat.max(-1)[0] - flat.mean(-1)) ** 2
    mask = (labels != -100).reshape(-1)
    return (loss * mask).sum() / mask.sum()


def _ou_activation(h, target, mask):
    """RMU.compute_activation_loss (its (B,) / (B, 1) division broadcasts to (B, B))."""
    diff = F.mse_loss(h, target.expand_as(h), reduction="none")
    summed = (diff * mask.unsqueeze(-1).expand_as(diff)).mean(dim=2).sum(dim=1)
    return (summed / mask.sum(dim=-1, keepdim=True)).mean()


# ----------------------------------------------------------------------------- ours, as the loop sums it

def _forward(obj, cfg, batch, alt=None) -> Forward:
    tokens = torch.ones_like(batch["labels"]) if obj.reads_all(cfg) else None  # no padding here
    return Forward(batch["logits"], batch["labels"], batch["ref"], alt=alt, tokens=tokens)


def ours(cfg: MethodConfig, forget: dict, retain: dict, alt: dict | None = None) -> float:
    f, r = methods.forget_objective(cfg.forget_loss), methods.retain_objective(cfg.retain_loss)
    alt_fwd = Forward(alt["logits"], alt["labels"], alt["ref"]) if alt else None
    total = cfg.forget_weight * f.fn(_forward(f, cfg, forget, alt_fwd), cfg)
    if r is not None:
        total = total + cfg.retain_weight * r.fn(_forward(r, cfg, retain), cfg)
    return total.item()


def theirs(name: str, forget: dict, retain: dict, alt: dict | None = None) -> float:
    gamma, alpha, a = THEIRS[name]
    f, f_ref, y = forget["logits"], forget["ref"], forget["labels"]
    forget_term = {
        "ga": lambda: -_ou_nll(f, y), "graddiff": lambda: -_ou_nll(f, y),
        "npo": lambda: _ou_dpo(None, (f, f_ref, y), a["beta"]),
        "simnpo": lambda: _ou_simnpo(f, y, a["beta"], a["delta"]),
        "wga": lambda: _ou_weighted(f, y, a["beta"]), "satimp": lambda: _ou_weighted(f, y, a["beta1"], a["beta2"]),
        "undial": lambda: _ou_undial(f, f_ref, y, a["beta"]), "ceu": lambda: _ou_ceu(f, y),
    }
    for name_ in ("dpo", "idkdpo", "altpo"):
        forget_term[name_] = lambda: _ou_dpo((alt["logits"], alt["ref"], alt["labels"]), (f, f_ref, y), a["beta"])
    return (gamma * forget_term[name]() + alpha * _ou_nll(retain["logits"], retain["labels"])).item()


PINNED = ["ga", "graddiff", "npo", "simnpo", "wga", "satimp", "undial", "ceu", "dpo", "idkdpo", "altpo"]


@pytest.mark.parametrize("name", PINNED)
def test_each_preset_gives_open_unlearnings_loss(name):
    forget, retain, alt = _batch(0), _batch(1), _batch(2, prompts=(2, 3, 4))
    cfg = preset(name)
    assert cfg.schedule == "joint"  # their forget and retain terms are one sum
    assert ours(cfg, forget, retain, alt) == pytest.approx(theirs(name, forget, retain, alt), rel=1e-5)


@pytest.mark.parametrize("name", ["undial", "satimp", "ceu", "simnpo"])
def test_one_line_forget_loss_is_not_theirs_the_preset_is(name):
    """`method.forget_loss=X` alone keeps our defaults (answer positions, retain NLL, forget weight 1): not
    theirs for these four."""
    forget, retain = _batch(0), _batch(1)
    default = ours(MethodConfig(forget_loss=name), forget, retain)
    assert abs(default - theirs(name, forget, retain)) > 1e-3
    assert ours(preset(name), forget, retain) == pytest.approx(theirs(name, forget, retain), rel=1e-5)


def test_undial_index_wrap_is_the_one_difference_left():
    """Their scatter lowers vocabulary entry V-100 at unlabelled positions; ours leaves them as the reference."""
    f = _batch(0)
    cfg = preset("undial")
    ours_ = methods.FORGET["undial"].fn(_forward(methods.FORGET["undial"], cfg, f), cfg).item()
    assert ours_ == pytest.approx(_ou_undial(f["logits"], f["ref"], f["labels"], 10.0).item(), rel=1e-6)
    wrapped = _ou_undial(f["logits"], f["ref"], f["labels"], 10.0, index_wrap=True).item()
    assert abs(wrapped - ours_) > 1e-4


def test_kl_retain_term_over_every_position_is_theirs():
    """GradDiff with retain_loss_type KL: theirs averages KL over all B x T positions (the last one too)."""
    forget, retain = _batch(0), _batch(1)
    cfg = dataclasses.replace(preset("graddiff"), retain_loss="kl")
    expected = (-_ou_nll(forget["logits"], forget["labels"]) + _ou_kl(retain["logits"], retain["ref"])).item()
    assert cfg.kl_positions == "all" and ours(cfg, forget, retain) == pytest.approx(expected, rel=1e-5)
    answer_only = dataclasses.replace(cfg, kl_positions="answer")
    assert abs(ours(answer_only, forget, retain) - expected) > 1e-3


def test_pdu_forget_term_is_theirs_one_position_earlier():
    """Their mask is each position's own label; ours the position predicting it: theirs on labels moved
    one position left is ours. The retain term is lambda x NLL (theirs adds the constant -lambda eps)."""
    f, r = _batch(0), _batch(1)
    cfg = dataclasses.replace(preset("pdu"), pdu_eps=0.3)
    moved = torch.full_like(f["labels"], -100)
    moved[:, :-1] = f["labels"][:, 1:]
    gamma, alpha, _ = THEIRS["pdu"]
    their_loss = gamma * _ou_pdu_forget(f["logits"], moved) + alpha * (_ou_nll(r["logits"], r["labels"]) - 0.3)
    assert ours(cfg, f, r) == pytest.approx(their_loss.item() + alpha * 0.3, rel=1e-5)
    assert abs(_ou_pdu_forget(f["logits"], f["labels"]).item() - _ou_pdu_forget(f["logits"], moved).item()) > 1


def _their_pdu_lambdas(pref: float, eta: float, eps: float, losses: list[list[float]]) -> list[float]:
    """PDU.final_loss_value: pref <- max(0, pref + eta (retain - eps)) inside every compute_loss call."""
    out = []
    for step in losses:
        for loss in step:
            pref = max(0.0, pref + eta * (loss - eps))
        out.append(pref)
    return out


def test_pdu_lambda_per_micro_batch_is_theirs_per_step_is_slower(dist_env):
    """20 optimizer steps at gradient accumulation 4 (their default), retain losses around eps."""
    g = torch.Generator().manual_seed(0)
    losses = (0.3 + 0.4 * torch.rand(20, 4, generator=g) - 0.1).tolist()  # mean 0.1 above eps 0.3
    expected = _their_pdu_lambdas(1.0, 1.0, 0.3, losses)
    cfg = dataclasses.replace(preset("pdu"), pdu_eps=0.3, pdu_warmup_epochs=0.0)
    assert cfg.pdu_update == "micro_batch"
    micro, step = RetainDual(cfg), RetainDual(dataclasses.replace(cfg, pdu_update="step"))
    state_micro: dict[str, float] = {}
    state_step: dict[str, float] = {}
    seen_micro, seen_step = [], []
    for s in losses:
        for loss in s:
            micro.update_micro_batch(state_micro, loss, forget_epoch=1.0, env=dist_env)
        step.update(state_step, sum(s) / len(s), forget_epoch=1.0)
        seen_micro.append(micro.weight(state_micro))
        seen_step.append(step.weight(state_step))
    assert seen_micro == pytest.approx(expected, rel=1e-9)
    assert seen_step[-1] - 1.0 == pytest.approx((expected[-1] - 1.0) / 4, rel=1e-6)  # no projection hit: 4x slower


def test_rmu_preset_gives_their_activation_losses():
    """Equal labelled counts per sample, where their (B, B) broadcast equals the per-sample mean."""
    g = torch.Generator().manual_seed(0)
    h_f, h_r, h_ref = (torch.randn(B, T, 16, generator=g) for _ in range(3))
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 3:] = True
    cfg = preset("rmu")
    u = rmu.control_vector(16, seed=0)
    target = cfg.rmu_steering_coeff * u
    ours_ = cfg.forget_weight * rmu.activation_loss(h_f, target, mask) + \
        cfg.retain_weight * rmu.activation_loss(h_r, h_ref, mask)
    gamma, alpha, a = THEIRS["rmu"]
    their = gamma * _ou_activation(h_f, (u * a["steering_coeff"]).view(1, 1, -1), mask) + \
        alpha * _ou_activation(h_r, h_ref, mask)
    assert ours_.item() == pytest.approx(their.item(), rel=1e-6)
    assert (cfg.rmu_layer, cfg.rmu_train_layers, cfg.retain_loss) == (7, (), "rmu")
