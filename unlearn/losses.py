"""Loss math over logits and answer-only labels. Shapes: logits (B, T, V), labels (B, T).

Labels use -100 for untrained positions; position t's logits predict token t+1. Every reduction is
in fp32 and over unmasked tokens only, so padding and question tokens never enter a loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def _shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits[:, :-1, :].float(), labels[:, 1:]


def nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per answer token (nats); 0 when nothing is labelled."""
    logits, labels = _shift(logits, labels)
    n = (labels != IGNORE).sum()
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    return total / n.clamp(min=1)


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(label) per position with 0 where masked, mask) both (B, T-1)."""
    logits, labels = _shift(logits, labels)
    mask = labels != IGNORE
    logp = -F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return logp * mask, mask


def sequence_logp(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of answer-token log-probs per sequence, (B,)."""
    logp, _ = token_logps(logits, labels)
    return logp.sum(-1)


def sequence_mean_logp(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Length-normalised answer log-prob per sequence, (B,)."""
    logp, mask = token_logps(logits, labels)
    return logp.sum(-1) / mask.sum(-1).clamp(min=1)


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor,
                    tokens: torch.Tensor | None = None) -> torch.Tensor:
    """KL(p_ref || p_policy) per position, averaged over answer positions (nats); with `tokens`, the
    (B, T) mask of real tokens, over every real token's position instead (unshifted: the prompt's and
    the last token's next-token distributions too, as open-unlearning's compute_kl_divergence).

    The full-vocabulary KL in fp32: exactly 0 when policy == reference, never inf from fp16
    overflow, and blind to padding (and, by default, to question positions). Every position is computed
    and the mask applied after (selecting the chosen positions first would make the device count them,
    a host sync; the callers already cut the logits to the span they need).
    """
    if tokens is None:
        logits, labels = _shift(logits, labels)
        ref_logits = ref_logits[:, :-1, :]
        mask = labels != IGNORE                                                  # (B, T-1)
    else:
        mask = tokens.bool()                                                     # (B, T)
    logp = F.log_softmax(logits.float(), dim=-1)                                 # (B, T', V)
    ref_logp = F.log_softmax(ref_logits.float(), dim=-1)
    per_position = F.kl_div(logp, ref_logp, log_target=True, reduction="none").sum(-1)
    return torch.where(mask, per_position, 0.0).sum() / mask.sum().clamp(min=1)


def npo(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative preference optimisation on sequence log-probs (B,): -(2/beta) E log sigmoid(-beta * ratio),
    ratio = log pi(y|x) - log pi_ref(y|x) (Zhang et al. 2024, eq. 3; open-unlearning's compute_dpo_loss
    with no preferred answer gives the same). 2/beta log 2 at pi = pi_ref; -> 0 as pi(y|x) -> 0."""
    log_ratio = logp - ref_logp
    return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()


def simnpo(mean_logp: torch.Tensor, beta: float, gamma: float) -> torch.Tensor:
    """SimNPO: -(2/beta) E log sigmoid(-beta * mean_logp - gamma), mean_logp = log pi(y|x) / |y|
    (Fan et al. 2024, eq. 6). open-unlearning writes it -(2/beta) log sigmoid(beta (NLL/|y| - delta)),
    the same loss with delta = gamma / beta."""
    return -(2.0 / beta) * F.logsigmoid(-beta * mean_logp - gamma).mean()


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy per position (B, T-1) with 0 where masked, mask)."""
    logits, labels = _shift(logits, labels)
    mask = labels != IGNORE
    ce = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return ce * mask, mask


def weighted_ascent(logits: torch.Tensor, labels: torch.Tensor, beta1: float, beta2: float = 0.0) -> torch.Tensor:
    """-mean over answer tokens of w_t CE_t with w_t = p_t^beta1 (1 - p_t)^beta2 detached, p_t = exp(-CE_t).
    beta2 = 0 is WGA (Wang et al. 2025, "Rethinking LLM Unlearning Objectives"; open-unlearning's
    compute_wga_loss); beta2 > 0 is SatImp (Yang et al. 2025; open-unlearning's compute_satimp_loss)."""
    ce, mask = token_ce(logits, labels)
    p = torch.exp(-ce.detach())
    weight = p ** beta1 * (1.0 - p) ** beta2
    return -(weight * ce)[mask].mean() if mask.any() else ce.sum() * 0.0


def soft_target_ce(logits: torch.Tensor, target_logits: torch.Tensor, labels: torch.Tensor,
                   skip_first: bool = False, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over answer tokens of -sum_v softmax(target_logits)_v log softmax(logits)_v; `target_logits`
    is detached. `skip_first`: the first answer token of each sequence is left out. `tokens` (B, T), the
    mask of real tokens: the mean runs over every position followed by a real token instead."""
    logits, labels = _shift(logits, labels)
    mask = labels != IGNORE if tokens is None else tokens[:, 1:].bool()
    if skip_first:
        first = mask.int().cumsum(-1) == 1
        mask = mask & ~first
    target = F.softmax(target_logits[:, :-1, :].float().detach(), dim=-1)
    ce = -(target * F.log_softmax(logits, dim=-1)).sum(-1)
    return ce[mask].mean() if mask.any() else ce.sum() * 0.0


def label_shifted(logits: torch.Tensor, labels: torch.Tensor, shift: float) -> torch.Tensor:
    """`logits` (B, T, V) with `shift` added to each position's next label token (answer positions only);
    -inf removes the label from the softmax."""
    out = logits.detach().float().clone()
    nxt = labels[:, 1:]
    b, t = torch.nonzero(nxt != IGNORE, as_tuple=True)
    out[b, t, nxt[b, t]] = out[b, t, nxt[b, t]] + shift
    return out


def dpo(win_logp: torch.Tensor, win_ref: torch.Tensor, lose_logp: torch.Tensor, lose_ref: torch.Tensor,
        beta: float) -> torch.Tensor:
    """DPO on sequence log-probs (B,): -(2/beta) E log sigmoid(beta [(log pi - log pi_ref)(y_win) -
    (log pi - log pi_ref)(y_lose)]) (Rafailov et al. 2023 with open-unlearning's 2/beta scale, its
    compute_dpo_loss). 2/beta log 2 at pi = pi_ref; falls as y_win gains on y_lose."""
    margin = (win_logp - win_ref) - (lose_logp - lose_ref)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


def logit_margin_flatness(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over answer positions of (max_v z_v - mean_v z_v)^2: 0 only for a uniform next-token
    distribution (Entesari et al. 2025's logit-margin flattening loss, open-unlearning's PDU)."""
    logits, labels = _shift(logits, labels)
    mask = labels != IGNORE
    z = logits[mask]                                          # (N, V) answer positions only
    margin = z.max(-1).values - z.mean(-1)
    return (margin ** 2).mean() if mask.any() else logits.sum() * 0.0
