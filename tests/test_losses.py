"""Each loss against a closed form, on small random tensors (B=3, T=7, V=11)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unlearn import losses, methods
from unlearn.config import MethodConfig
from unlearn.methods import Forward

B, T, V = 3, 7, 11


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels): question tokens and right padding masked with -100, lengths 7, 5, 3."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, :2] = losses.IGNORE        # the question
    labels[1, 5:] = losses.IGNORE        # padding
    labels[2, 3:] = losses.IGNORE
    return logits, labels


def _perturb_masked(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits changed wildly wherever the *next* label is masked (positions that predict nothing)."""
    out = logits.clone()
    predicts_nothing = torch.ones(B, T, dtype=torch.bool)
    predicts_nothing[:, :-1] = labels[:, 1:] == losses.IGNORE
    out[predicts_nothing] = torch.randn(int(predicts_nothing.sum()), V) * 50
    return out


def test_uniform_logits_give_nll_log_vocab(batch):
    _, labels = batch
    assert losses.nll(torch.zeros(B, T, V), labels).item() == pytest.approx(math.log(V), abs=1e-6)


def test_nll_is_the_token_mean_cross_entropy_over_answer_tokens(batch):
    logits, labels = batch
    keep = labels[:, 1:] != losses.IGNORE
    logp = F.log_softmax(logits[:, :-1].double(), -1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    assert losses.nll(logits, labels).item() == pytest.approx(-logp[keep].mean().item(), rel=1e-6)


def test_ga_is_exactly_minus_nll(batch):
    logits, labels = batch
    fwd = Forward(logits, labels)
    assert torch.equal(methods.FORGET["ga"].fn(fwd, MethodConfig()), -methods.RETAIN["nll"].fn(fwd, MethodConfig()))


def test_kl_is_zero_when_policy_is_reference(batch):
    logits, labels = batch
    fwd = Forward(logits, labels, ref_logits=logits.clone())
    assert methods.RETAIN["kl"].fn(fwd, MethodConfig()).item() == 0.0


def test_kl_matches_the_definition_and_direction(batch):
    """KL(p_ref || p_policy) = sum_v p_ref (log p_ref - log p_policy), averaged over answer positions."""
    logits, labels = batch
    ref = torch.randn(B, T, V, generator=torch.Generator().manual_seed(1))
    keep = labels[:, 1:] != losses.IGNORE
    p_ref = F.softmax(ref[:, :-1].double(), -1)
    expected = (p_ref * (p_ref.log() - F.log_softmax(logits[:, :-1].double(), -1))).sum(-1)[keep].mean()
    got = losses.kl_to_reference(logits, ref, labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert got.item() > 0


def test_npo_with_policy_equal_reference_is_two_over_beta_log_two(batch):
    logits, labels = batch
    for beta in (0.1, 1.0, 2.5):
        fwd = Forward(logits, labels, ref_logits=logits.clone())
        got = methods.FORGET["npo"].fn(fwd, MethodConfig(beta=beta)).item()
        assert got == pytest.approx(2 / beta * math.log(2), rel=1e-6)


def test_simnpo_closed_form_on_uniform_logits(batch):
    """Uniform logits: mean answer log-prob = -log V for every sequence."""
    _, labels = batch
    beta, gamma = 0.5, 0.3
    cfg = MethodConfig(beta=7.0, simnpo_beta=beta, simnpo_gamma=gamma)  # SimNPO reads its own beta
    got = methods.FORGET["simnpo"].fn(Forward(torch.zeros(B, T, V), labels), cfg)
    expected = -(2 / beta) * math.log(1 / (1 + math.exp(-(beta * math.log(V) - gamma))))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # open-unlearning's form, -(2/b) logsigmoid(b (NLL/|y| - delta)) with delta = gamma / b: same number
    delta = gamma / beta
    assert got.item() == pytest.approx(-(2 / beta) * math.log(1 / (1 + math.exp(-beta * (math.log(V) - delta)))),
                                       rel=1e-6)
    assert MethodConfig().simnpo_beta == 4.5 and MethodConfig().beta == 0.1


def test_npo_at_policy_unlike_reference_matches_the_closed_form():
    """Policy uniform (log p = -log V per token), reference puts logit a on each label:
    log p_ref = log(e^a / (e^a + V - 1)) per token. NPO = -(2/b) mean_i log sigmoid(-b n_i (lp - lr))."""
    a, beta = 2.0, 0.7
    labels = torch.full((2, 5), losses.IGNORE)
    labels[0, 2:5] = torch.tensor([3, 1, 4])      # 3 answer tokens
    labels[1, 1:5] = torch.tensor([2, 7, 1, 8])   # 4 answer tokens
    ref = torch.zeros(2, 5, V)
    ref[:, :-1].scatter_(2, labels[:, 1:].clamp(min=0).unsqueeze(-1), a)
    got = methods.FORGET["npo"].fn(Forward(torch.zeros(2, 5, V), labels, ref_logits=ref), MethodConfig(beta=beta))
    per_token = -math.log(V) - math.log(math.exp(a) / (math.exp(a) + V - 1))  # log pi - log pi_ref < 0 here
    expected = sum(-(2 / beta) * math.log(1 / (1 + math.exp(beta * n * per_token))) for n in (3, 4)) / 2
    assert got.item() == pytest.approx(expected, rel=1e-6)
    flipped = sum(-(2 / beta) * math.log(1 / (1 + math.exp(-beta * n * per_token))) for n in (3, 4)) / 2
    assert abs(expected - flipped) > 0.5  # a flipped ratio sign would not pass


def test_sequence_logps_sum_and_mean_over_answer_tokens_only(batch):
    _, labels = batch
    n = (labels[:, 1:] != losses.IGNORE).sum(-1).float()
    uniform = torch.zeros(B, T, V)
    assert torch.allclose(losses.sequence_logp(uniform, labels), -n * math.log(V))
    assert torch.allclose(losses.sequence_mean_logp(uniform, labels), torch.full((B,), -math.log(V)))


@pytest.mark.parametrize("name", ["ga", "npo", "simnpo", "wga", "satimp", "undial", "ceu", "pdu", "nll", "kl",
                                  "random_mismatch"])
def test_logits_at_masked_positions_change_nothing(batch, name):
    logits, labels = batch
    ref = torch.randn(B, T, V, generator=torch.Generator().manual_seed(2))
    obj = methods.FORGET.get(name) or methods.RETAIN[name]
    before = obj.fn(Forward(logits, labels, ref), MethodConfig())
    after = obj.fn(Forward(_perturb_masked(logits, labels), labels, _perturb_masked(ref, labels)), MethodConfig())
    assert after.item() == pytest.approx(before.item(), rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("name", ["ga", "npo", "simnpo", "wga", "satimp", "undial", "ceu", "pdu", "nll", "kl"])
def test_gradients_flow_only_into_policy_logits_at_answer_positions(batch, name):
    logits, labels = batch
    logits = logits.clone().requires_grad_(True)
    ref = torch.randn(B, T, V, generator=torch.Generator().manual_seed(3))
    obj = methods.FORGET.get(name) or methods.RETAIN[name]
    obj.fn(Forward(logits, labels, ref), MethodConfig()).backward()
    predicts_nothing = torch.ones(B, T, dtype=torch.bool)
    predicts_nothing[:, :-1] = labels[:, 1:] == losses.IGNORE
    assert logits.grad[predicts_nothing].abs().max() == 0
    assert logits.grad[~predicts_nothing].abs().max() > 0


def test_nothing_labelled_gives_zero_not_nan():
    labels = torch.full((2, 4), losses.IGNORE)
    assert losses.nll(torch.randn(2, 4, V), labels).item() == 0.0
    assert losses.kl_to_reference(torch.randn(2, 4, V), torch.randn(2, 4, V), labels).item() == 0.0


def test_registry_names_and_reference_needs():
    assert {n: o.needs_reference for n, o in methods.FORGET.items()} == {
        "ga": False, "npo": True, "simnpo": False, "wga": False, "satimp": False, "undial": True, "ceu": False,
        "idknll": False, "dpo": True, "idkdpo": True, "pdu": False, "rmu": False, "whp": False}
    assert methods.RETAIN["kl"].needs_reference and not methods.RETAIN["nll"].needs_reference
    assert methods.needs_reference(MethodConfig(forget_loss="ga", retain_loss="kl"))
    assert not methods.needs_reference(MethodConfig(forget_loss="simnpo", retain_loss="nll"))


def _open_unlearning_weighted(logits, labels, beta1, beta2=None):
    """The WGA / SatImp forget loss written the way open-unlearning's trainer utils compute it."""
    shift_logits, shift_labels = logits[..., :-1, :], labels[..., 1:]
    lm = torch.nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1))
    weight = (-lm).exp().detach() ** beta1
    if beta2 is not None:
        weight = weight * (1 - (-lm).exp().detach()) ** beta2
    return -(weight * lm)[shift_labels.reshape(-1) != -100].mean()


def test_wga_and_satimp_closed_forms_reference_and_direction(batch):
    logits, labels = batch
    _, labels_ = batch
    uniform = torch.zeros(B, T, V, requires_grad=True)
    wga = methods.FORGET["wga"].fn(Forward(uniform, labels_), MethodConfig(wga_beta=2.0))
    assert wga.item() == pytest.approx(-(V ** -2.0) * math.log(V), rel=1e-6)  # p = 1/V on every token
    wga.backward()
    b, t = torch.nonzero(labels_[:, 1:] != losses.IGNORE, as_tuple=True)
    assert (uniform.grad[b, t, labels_[:, 1:][b, t]] > 0).all()  # descent lowers the answer tokens' logits
    sat = methods.FORGET["satimp"].fn(Forward(torch.zeros(B, T, V), labels_), MethodConfig())
    assert sat.item() == pytest.approx(-(V ** -5.0) * (1 - 1 / V) * math.log(V), rel=1e-6)
    # open-unlearning's formula on the same random logits (values computed by both, equal to 1e-6)
    cfg = MethodConfig()
    assert methods.FORGET["wga"].fn(Forward(logits, labels), cfg).item() == pytest.approx(
        _open_unlearning_weighted(logits, labels, 1.0).item(), rel=1e-6)
    assert methods.FORGET["satimp"].fn(Forward(logits, labels), cfg).item() == pytest.approx(
        _open_unlearning_weighted(logits, labels, 5.0, 1.0).item(), rel=1e-6)


def test_undial_and_ceu_closed_forms_and_direction(batch):
    """Uniform policy: CE to any target distribution is log V. UNDIAL's target lowers the answer
    token (q_y = e^-b / (e^-b + V - 1) < 1/V), CE-U's removes it: both push its logit down."""
    _, labels = batch
    policy = torch.zeros(B, T, V, requires_grad=True)
    und = methods.FORGET["undial"].fn(Forward(policy, labels, ref_logits=torch.zeros(B, T, V)), MethodConfig())
    assert und.item() == pytest.approx(math.log(V), rel=1e-6)
    und.backward()
    b, t = torch.nonzero(labels[:, 1:] != losses.IGNORE, as_tuple=True)
    n = len(b)
    q_y = math.exp(-10) / (math.exp(-10) + V - 1)
    assert policy.grad[b, t, labels[:, 1:][b, t]] == pytest.approx(torch.full((n,), (1 / V - q_y) / n), rel=1e-4)
    policy = torch.zeros(B, T, V, requires_grad=True)
    ceu = methods.FORGET["ceu"].fn(Forward(policy, labels), MethodConfig())
    assert ceu.item() == pytest.approx(math.log(V), rel=1e-6)
    ceu.backward()
    first = (labels[:, 1:] != losses.IGNORE).int().cumsum(-1) == 1
    grads = policy.grad[b, t, labels[:, 1:][b, t]]
    assert (grads[~first[b, t]] > 0).all() and (grads[first[b, t]] == 0).all()  # first answer token skipped
