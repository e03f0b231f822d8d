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


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_policy) per answer position, averaged over answer positions (nats).

    The full-vocabulary KL in fp32: exactly 0 when policy == reference, never inf from fp16
    overflow, and blind to positions that are padding or question.
    """
    logits, labels = _shift(logits, labels)
    ref_logits = ref_logits[:, :-1, :].float()
    mask = labels != IGNORE
    logp = F.log_softmax(logits[mask], dim=-1)          # (N, V) answer positions only
    ref_logp = F.log_softmax(ref_logits[mask], dim=-1)  # (N, V)
    kl = F.kl_div(logp, ref_logp, log_target=True, reduction="sum")
    return kl / mask.sum().clamp(min=1)


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
