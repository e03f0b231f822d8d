"""The paper's reference unlearning step, re-implemented from its description for comparison.

What it does, per optimizer step on a batch of B harmful prompts+answers and B normal QA pairs:
  * policy and reference are two full fp32 copies of the model; the reference forward runs
    under no_grad, and plain `torch.optim.AdamW` updates every policy weight (no clipping);
  * every batch is padded to `max_length` (or to its longest sample, to isolate that effect);
  * loss = ga (minus the answer-token cross-entropy on harmful answers)
         + random mismatch (cross-entropy of random normal answers after harmful prompts)
         + "KL" on normal data: the cross-entropy of the policy's softmax against the reference's,
           over every position of the padded batch and the full vocabulary, in fp32;
  * the cross-entropies are computed per position for all B x T positions, then masked to the
    answer tokens and averaged per sample, then over the batch; one backward of the sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearn.data import IGNORE, Sample


def pad_batch(samples: list[Sample], pad_id: int, width: int | None) -> dict[str, torch.Tensor]:
    """Right-pad to `width` (None: to the longest sample); pads are found by id, as the reference does."""
    width = width or max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(samples):
        n = min(len(s["input_ids"]), width)
        ids[i, :n] = torch.tensor(s["input_ids"][:n])
        labels[i, :n] = torch.tensor(s["labels"][:n])
    return {"input_ids": ids, "attention_mask": (ids != pad_id).long(), "labels": labels}


def answer_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the per-sample mean answer-token cross-entropy; logits (B, T, V) fp32."""
    per_pos = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:].clamp(min=0),
                              reduction="none")                       # (B, T-1), every position
    mask = (labels[:, 1:] != IGNORE).float()
    return ((per_pos * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def soft_ce(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """-sum_v p_ref(v) log p_policy(v), averaged over all B x T positions (padding included)."""
    p_ref = torch.softmax(ref_logits, -1)
    log_q = torch.log(torch.softmax(logits, -1) + 1e-12)
    return -(p_ref * log_q).sum(-1).mean()


class BaselineLoop:
    """One reference-loop optimizer step per `step(forget, mismatch, normal)` call."""

    def __init__(self, model_dir: str, device: torch.device, lr: float, pad_id: int, width: int | None,
                 weights: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        from transformers import AutoModelForCausalLM

        self.policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
        self.reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
        self.policy.config.use_cache = self.reference.config.use_cache = False
        self.policy.train()
        self.optimizer = torch.optim.AdamW(self.policy.parameters(), lr=lr)
        self.device, self.pad_id, self.width, self.weights = device, pad_id, width, weights

    def _logits(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

    def step(self, forget: list[Sample], mismatch: list[Sample], normal: list[Sample]) -> dict[str, float]:
        """Returns the losses and the token counts (real and padded) the policy processed."""
        batches = [{k: v.to(self.device) for k, v in pad_batch(s, self.pad_id, self.width).items()}
                   for s in (forget, mismatch, normal)]
        bad, rand, good = batches
        ga = -answer_ce(self._logits(self.policy, bad), bad["labels"])
        mis = answer_ce(self._logits(self.policy, rand), rand["labels"])
        with torch.no_grad():
            ref_logits = self._logits(self.reference, good)
        kl = soft_ce(self._logits(self.policy, good), ref_logits)
        w_ga, w_mis, w_kl = self.weights
        loss = w_ga * ga + w_mis * mis + w_kl * kl
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss.item(), "ga": ga.item(), "mismatch": mis.item(), "kl": kl.item(),
                "padded_tokens": sum(b["input_ids"].numel() for b in batches)}
