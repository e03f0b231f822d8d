"""Privacy suite (beyond the paper): does the model still reveal that it was trained on the forget set?

- Min-k% prob membership inference: a sample's score is the mean log-probability of its k% least
  likely tokens (members, seen in training, have fewer very unlikely tokens). AUC of forget
  samples (members) against held-out samples (non-members): 0.5 = indistinguishable.
- PrivLeak (MUSE): (AUC - AUC_ref) / AUC_ref, where AUC_ref is a retrained model's AUC
  (--reference_auc) or else the reference model's. 0 = leaks like the reference; > 0 = more.
"""

from __future__ import annotations

import math

import torch

from unlearn.errors import UserError
from unlearn.eval.generation import token_logprobs
from unlearn.eval.stats import auc


def min_k_scores(token_logps: list[torch.Tensor], k: float) -> list[float]:
    """Per sample, the mean of the lowest ceil(k * T) token log-probs (at least one token)."""
    if not 0 < k <= 1:
        raise UserError(f"--min_k {k} out of range; expected a fraction in (0, 1], e.g. 0.2")
    out = []
    for lp in token_logps:
        n = max(1, math.ceil(k * lp.numel()))
        out.append(float(torch.topk(lp, n, largest=False).values.mean()) if lp.numel() else float("nan"))
    return out


def min_k_auc(model, tokenizer, members, non_members, k: float, batch_size: int = 16) -> float:
    pad = tokenizer.pad_token_id
    pos = min_k_scores(token_logprobs(model, members, pad, batch_size, desc="min-k (forget)"), k)
    neg = min_k_scores(token_logprobs(model, non_members, pad, batch_size, desc="min-k (held out)"), k)
    return auc(pos, neg)


def run(ctx) -> dict:
    o = ctx.opts
    if not o.holdout:
        raise UserError("privacy suite needs held-out text the run never trained on; expected --holdout FILE")
    members, non_members = ctx.samples("forget"), ctx.file_samples(o.holdout)
    value = min_k_auc(ctx.model, ctx.tokenizer, members, non_members, o.min_k, o.batch_size)
    metrics = {"min_k_auc": {"value": value, "n": len(members) + len(non_members)}}
    info = {"members": ctx.cfg.data.forget, "non_members": o.holdout, "k": o.min_k,
            "n_members": len(members), "n_non_members": len(non_members)}
    ref_auc = o.reference_auc if o.reference_auc >= 0 else None
    if ref_auc is None and ctx.reference_name:
        def compute() -> float:
            model, tok = ctx.reference()
            # the reference's own tokenizer may differ: rebuild both sets with it
            return min_k_auc(model, tok, _retokenize(members, ctx.tokenizer, tok),
                             _retokenize(non_members, ctx.tokenizer, tok), o.min_k, o.batch_size)
        ref_auc = ctx.cached({"what": "min_k_auc", "members": ctx.cfg.data.forget, "holdout": o.holdout}, compute)
        info["reference_auc_from"] = ctx.reference_name
    elif ref_auc is not None:
        info["reference_auc_from"] = "--reference_auc"
    if ref_auc is not None:
        info["reference_auc"] = ref_auc
        metrics["privleak"] = {"value": (value - ref_auc) / ref_auc if ref_auc > 0 else float("nan"),
                               "n": metrics["min_k_auc"]["n"]}
    return {"metrics": metrics, "info": info, "examples": []}


def _retokenize(samples, tok_from, tok_to):
    """The same texts in another tokenizer's ids (labels on every token after the first)."""
    if tok_from.get_vocab() == tok_to.get_vocab():
        return samples
    out = []
    for s in samples:
        ids = tok_to(tok_from.decode(s["input_ids"], skip_special_tokens=True))["input_ids"]
        out.append({"input_ids": ids, "labels": list(ids)})
    return out
