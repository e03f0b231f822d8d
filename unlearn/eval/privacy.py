"""Privacy suite: does the model still reveal that it was trained on the forget set? As MUSE
(Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation"; its eval.py, followed by
open-unlearning's privleak metric) computes it:

- Min-k% prob (Shi et al. 2023): a sample's score is the mean log-probability of its k% least likely
  tokens, k = 0.4 and floor(k x T) tokens (at least one), as MUSE's Min-40%. Seen text has fewer very
  unlikely tokens, so a higher score reads "member".
- min_k_auc: the ROC AUC of that score separating held-out text from the forget set, with the forget
  set as the negative class (MUSE's `forget_holdout_Min-40%`). A model that memorised the forget set
  scores it higher than held-out text: AUC near 0. One that never saw it: near 0.5.
- privleak = (AUC - AUC_retrain) / AUC_retrain x 100 (percent): 0 = leaks like a model retrained
  without the forget set; MUSE's un-unlearned targets sit near -100. AUC_retrain comes from a
  retrained model (--retrained MODEL) or is given (--reference_auc, same orientation). Without either,
  privleak is left out and the suite says why: the original model is no stand-in (it saw the
  forget set); open-unlearning's default of 0.5 is available as --reference_auc 0.5.
"""

from __future__ import annotations

import math

import torch

from unlearn.errors import UserError
from unlearn.eval.generation import token_logprobs
from unlearn.eval.stats import auc, auc_ci


def min_k_scores(token_logps: list[torch.Tensor], k: float) -> list[float]:
    """Per sample, the mean of the lowest floor(k * T) token log-probs (at least one token), as MUSE's
    `int(len(token_log_probs) * k)`."""
    if not 0 < k <= 1:
        raise UserError(f"--min_k {k} out of range; expected a fraction in (0, 1], e.g. 0.4")
    out = []
    for lp in token_logps:
        n = max(1, math.floor(k * lp.numel()))
        out.append(float(torch.topk(lp, n, largest=False).values.mean()) if lp.numel() else float("nan"))
    return out


def privleak(auc_value: float, auc_retrain: float) -> float:
    """MUSE's PrivLeak in percent: (AUC - AUC_retrain) / AUC_retrain x 100."""
    return (auc_value - auc_retrain) / auc_retrain * 100.0 if auc_retrain > 0 else float("nan")


def min_k_score_sets(model, tokenizer, positive, negative, k: float, batch_size: int = 16):
    """Min-k% scores of the positive and the negative class's samples."""
    pad = tokenizer.pad_token_id
    return (min_k_scores(token_logprobs(model, positive, pad, batch_size, desc="min-k (positive)"), k),
            min_k_scores(token_logprobs(model, negative, pad, batch_size, desc="min-k (negative)"), k))


def min_k_auc(model, tokenizer, members, non_members, k: float, batch_size: int = 16) -> float:
    """AUC of the Min-k% score ranking `members` (positive class) above `non_members`."""
    return auc(*min_k_score_sets(model, tokenizer, members, non_members, k, batch_size))


def run(ctx) -> dict:
    o = ctx.opts
    if not o.holdout:
        raise UserError("privacy suite needs held-out text the run never trained on; expected --holdout FILE")
    forget, holdout = ctx.samples("forget"), ctx.file_samples(o.holdout)
    # MUSE's orientation: held-out text is the positive class, the forget set the negative one
    metrics = {"min_k_auc": auc_ci(*min_k_score_sets(ctx.model, ctx.tokenizer, holdout, forget, o.min_k,
                                                      o.batch_size))}
    value = metrics["min_k_auc"]["value"]
    info = {"forget": ctx.cfg.data.forget, "holdout": o.holdout, "k": o.min_k, "n_forget": len(forget),
            "n_holdout": len(holdout), "orientation": "holdout positive, forget negative (MUSE forget_holdout)"}
    ref_auc = o.reference_auc if o.reference_auc >= 0 else None
    if ref_auc is not None:
        info["retrain_auc_from"] = "--reference_auc"
    elif o.retrained:
        def compute() -> float:
            from unlearn.model import load_for_eval

            model, tok = load_for_eval(o.retrained)
            # the retrained model's own tokenizer may differ: rebuild both sets with it
            return min_k_auc(model, tok, _retokenize(holdout, ctx.tokenizer, tok),
                             _retokenize(forget, ctx.tokenizer, tok), o.min_k, o.batch_size)
        ref_auc = ctx.cached({"what": "min_k_auc_muse", "model": o.retrained, "forget": ctx.cfg.data.forget,
                              "holdout": o.holdout}, compute)
        info["retrain_auc_from"] = o.retrained
    else:
        info["privleak"] = ("not computed: PrivLeak compares with a model retrained without the forget set; "
                            "expected --retrained MODEL or --reference_auc AUC (open-unlearning's default: 0.5)")
    if ref_auc is not None and ref_auc <= 0:
        info["retrain_auc"] = ref_auc
        info["privleak"] = ("not computed: the retrained model's AUC is 0 (it ranks every forget text above every "
                            "held-out one), and PrivLeak divides by it; expected held-out text the retrained model "
                            "does not find more likely than the forget set")
    elif ref_auc is not None:
        info["retrain_auc"] = ref_auc
        m = metrics["min_k_auc"]  # the AUC's interval carried through (PrivLeak rises with the AUC)
        metrics["privleak"] = {"value": privleak(value, ref_auc), "ci_low": privleak(m["ci_low"], ref_auc),
                               "ci_high": privleak(m["ci_high"], ref_auc), "n": m["n"]}
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
