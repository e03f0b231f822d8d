"""IdkNLL, DPO/IdkDPO and PDU on tiny logits: closed forms, gradient directions, and values pinned to
the reference implementations' formulas (numbers computed once in float64 numpy from
open-unlearning's compute_dpo_loss / PDU.compute_loss and TOFU's idk loss, on the tensors below)."""

from __future__ import annotations

import math

import pytest
import torch

from unlearn import losses, methods
from unlearn.config import MethodConfig
from unlearn.methods import Forward
from unlearn.train.dual import KEY, RetainDual

B, T, V = 3, 7, 11


def _tensors():
    """(logits, labels, ref) of forget answers and (alt, alt_labels, alt_ref) of alternate answers."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :2] = losses.IGNORE
    labels[1, 5:] = losses.IGNORE
    labels[2, 3:] = losses.IGNORE
    g = torch.Generator().manual_seed(5)
    ref = torch.randn(B, T, V, generator=g) * 3
    alt = torch.randn(B, T, V, generator=g) * 3
    alt_ref = torch.randn(B, T, V, generator=g) * 3
    alt_labels = torch.randint(0, V, (B, T), generator=g)
    alt_labels[:, :3] = losses.IGNORE
    alt_labels[0, 6:] = losses.IGNORE
    return logits, labels, ref, alt, alt_labels, alt_ref


def _fwd(logits, labels, ref, alt, alt_labels, alt_ref) -> Forward:
    return Forward(logits, labels, ref, alt=Forward(alt, alt_labels, alt_ref))


def _one_token(policy_row: list[float], ref_row: list[float], label: int):
    """A (1, 2, 3) batch whose single answer token (position 1) is predicted by position 0's logits."""
    logits = torch.tensor([[policy_row, [0.0, 0.0, 0.0]]], requires_grad=True)
    ref = torch.tensor([[ref_row, [0.0, 0.0, 0.0]]])
    return logits, torch.tensor([[losses.IGNORE, label]]), ref


def test_dpo_closed_form_and_gradient_direction():
    """Policy logits (2, 0, 0), uniform reference; alternate answer token 0, forget answer token 1:
    the margin is (2 - lse + log 3) - (0 - lse + log 3) = 2, loss = (2/b) log(1 + e^(-2b))."""
    win, win_labels, win_ref = _one_token([2.0, 0.0, 0.0], [0.0, 0.0, 0.0], 0)
    lose, lose_labels, lose_ref = _one_token([2.0, 0.0, 0.0], [0.0, 0.0, 0.0], 1)
    for name in ("dpo", "idkdpo"):
        loss = methods.FORGET[name].fn(_fwd(lose, lose_labels, lose_ref, win, win_labels, win_ref), MethodConfig())
        assert loss.item() == pytest.approx(20 * math.log1p(math.exp(-0.2)), rel=1e-6)  # dpo_beta 0.1
    loss.backward()
    assert win.grad[0, 0, 0] < 0 < lose.grad[0, 0, 1]  # descent raises the alternate, lowers the forget answer


def test_dpo_is_two_over_beta_log_two_at_the_reference():
    logits, labels, _, alt, alt_labels, _ = _tensors()
    fwd = _fwd(logits, labels, logits.clone(), alt, alt_labels, alt.clone())
    assert methods.FORGET["dpo"].fn(fwd, MethodConfig(dpo_beta=0.5)).item() == pytest.approx(4 * math.log(2), rel=1e-6)


def test_dpo_matches_open_unlearning_compute_dpo_loss():
    """compute_dpo_loss: win = alternate, lose = forget; sequence sums of token log-probs; beta 0.1."""
    assert methods.FORGET["dpo"].fn(_fwd(*_tensors()), MethodConfig()).item() == pytest.approx(
        21.081741194212597, rel=1e-6)


def test_idknll_closed_form_gradient_and_tofu_value():
    logits, labels, ref, alt, alt_labels, alt_ref = _tensors()
    uniform = torch.zeros(B, T, V, requires_grad=True)
    forget = logits.clone().requires_grad_(True)
    loss = methods.FORGET["idknll"].fn(_fwd(forget, labels, None, uniform, alt_labels, None), MethodConfig())
    assert loss.item() == pytest.approx(math.log(V), rel=1e-6)
    loss.backward()
    b, t = torch.nonzero(alt_labels[:, 1:] != losses.IGNORE, as_tuple=True)
    assert (uniform.grad[b, t, alt_labels[:, 1:][b, t]] < 0).all()  # descent raises the idk tokens
    assert forget.grad is None  # the forget answers' logits are not part of the loss
    # TOFU's "idk" loss (the HF token-mean cross-entropy of the idk batch) on the same tensors
    value = methods.FORGET["idknll"].fn(_fwd(logits, labels, ref, alt, alt_labels, alt_ref), MethodConfig())
    assert value.item() == pytest.approx(6.674997349530054, rel=1e-6)


def test_pdu_flattening_closed_form_gradient_and_open_unlearning_value():
    logits, labels, *_ = _tensors()
    assert methods.FORGET["pdu"].fn(Forward(torch.zeros(B, T, V), labels), MethodConfig()).item() == 0.0
    # one logit c above a zero row: (max - mean)^2 = (c - c/V)^2 at every answer position
    peaked = torch.zeros(B, T, V)
    peaked[..., 4] = 3.0
    peaked.requires_grad_(True)
    loss = methods.FORGET["pdu"].fn(Forward(peaked, labels), MethodConfig())
    assert loss.item() == pytest.approx((3.0 - 3.0 / V) ** 2, rel=1e-6)
    loss.backward()
    predicts = labels[:, 1:] != losses.IGNORE
    assert (peaked.grad[:, :-1][predicts][:, 4] > 0).all()             # descent lowers the peak ...
    assert (peaked.grad[:, :-1][predicts][:, :4] < 0).all()            # ... and raises the rest
    # open-unlearning masks logits by their own position's label (one later than the positions that
    # predict answer tokens): its formula with the labels moved one position left is ours
    value = methods.FORGET["pdu"].fn(Forward(logits, labels), MethodConfig()).item()
    assert value == pytest.approx(26.845454579865038, rel=1e-6)
    assert abs(value - 30.9803111686974) > 1  # their mask on unmoved labels: a different number


def test_pdu_dual_update_is_projected_ascent_after_warmup():
    """open-unlearning's step update, pref <- max(0, pref + eta (L_retain - eps)), by hand."""
    dual = RetainDual(MethodConfig(forget_loss="pdu", retain_weight=1.0, pdu_eps=0.3, pdu_eta=5.0,
                                   pdu_warmup_epochs=1.0))
    state: dict[str, float] = {}
    dual.update(state, 1.0, forget_epoch=0.5)          # still warming up: lambda stays
    assert dual.weight(state) == 1.0 and KEY not in state
    seen = []
    for retain_loss in (1.0, 0.1, 0.1, 0.1, 0.1, 0.1):
        dual.update(state, retain_loss, forget_epoch=1.0)
        seen.append(dual.weight(state))
    assert seen == pytest.approx([4.5, 3.5, 2.5, 1.5, 0.5, 0.0])      # projected onto lambda >= 0
