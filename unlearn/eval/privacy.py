"""Privacy suite: does the model still reveal that it was trained on the forget set? As MUSE
(Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation"; swj0419/muse_bench eval.py and
metrics/privleak.py, followed by open-unlearning's privleak metric) computes it:

- Unit (--privacy_unit): `document` (default), as MUSE's privleak: each document of the forget set and
  of the held-out set (a row of a JSON/JSONL/CSV/parquet text file or hub split; a .txt file is one
  document) is one sample, tokenised whole with the tokenizer's special tokens (MUSE's
  `tokenizer.encode(text)`), every token after the first scored. MUSE does not cut long documents
  (Llama-2's rotary positions run past 4,096 tokens); a model with learned positions cannot, so here a
  document is cut to its first max_position_embeddings tokens and eval.json counts the cut ones.
  `block`: the documents concatenated (EOS between them) and cut into data.max_length blocks, as the
  run trained on them: for a side that is a single long text (a book), which as one document gives an
  AUC of 0 or 1. Non-text data (QA pairs, ...): one sample per pair, labels as the run trained.
- Min-k% prob (Shi et al. 2023): a sample's score is the mean log-probability of its k% least likely
  tokens, k = 0.4 (MUSE's default key `forget_holdout_Min-40%`) and floor(k x T) tokens. MUSE keeps
  floor(k x T) even when it is 0 (a NaN score for a text under 3 tokens at k = 0.4); here at least one
  token. MUSE stores -mean and ranks by its negative, i.e. by this score: higher reads "member".
- min_k_auc: the ROC AUC (sklearn's roc_curve + auc there; Mann-Whitney with ties half here, the same
  number) of that score with held-out text as the positive class (label 1) and the forget set as the
  negative one (label 0), MUSE's `forget_holdout_Min-40%`. A model that memorised the forget set scores
  it higher than held-out text: AUC near 0. One that never saw it: near 0.5.
- privleak = (AUC - AUC_retrain) / AUC_retrain x 100 (percent): 0 = leaks like a model retrained
  without the forget set; MUSE's un-unlearned targets sit near -100. AUC_retrain comes from a
  retrained model (--retrained MODEL) or is given (--reference_auc, same orientation; MUSE's own
  AUC_RETRAIN for Min-40% is 0.4772 on News and 0.5393 on Books, its constants.py). Without either,
  privleak is left out and the suite says why: the original model is no stand-in (it saw the forget
  set); open-unlearning's default of 0.5 is available as --reference_auc 0.5.
"""

from __future__ import annotations

import math

import torch

from unlearn.errors import UserError
from unlearn.eval import inputs
from unlearn.eval.generation import token_logprobs
from unlearn.eval.stats import auc, auc_ci

UNITS = {"document": "each document whole (first max_position_embeddings tokens), as MUSE's privleak",
         "block": "data.max_length blocks of the documents concatenated, as the run trained on them"}
"""--privacy_unit: what one Min-k% sample of text data is."""


def check_k(k: float) -> None:
    if not 0 < k <= 1:
        raise UserError(f"--min_k {k} out of range; expected a fraction in (0, 1], e.g. 0.4")


def min_k_scores(token_logps: list[torch.Tensor], k: float) -> list[float]:
    """Per sample, the mean of the lowest floor(k * T) token log-probs (at least one token), as MUSE's
    `int(len(token_log_probs) * k)`."""
    check_k(k)
    out = []
    for lp in token_logps:
        n = max(1, math.floor(k * lp.numel()))
        out.append(float(torch.topk(lp, n, largest=False).values.mean()) if lp.numel() else float("nan"))
    return out


def privleak(auc_value: float, auc_retrain: float) -> float:
    """MUSE's PrivLeak in percent: (AUC - AUC_retrain) / AUC_retrain x 100."""
    return (auc_value - auc_retrain) / auc_retrain * 100.0 if auc_retrain > 0 else float("nan")


def document_samples(texts: list[str], tokenizer, window: int) -> tuple[list[dict], int]:
    """(one sample per document, how many were cut): the document's ids with the tokenizer's special
    tokens, cut to the first `window`; a document of one token has nothing to score and is left out."""
    out, cut = [], 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        cut += len(ids) > window
        if len(ids[:window]) > 1:
            out.append({"input_ids": ids[:window], "labels": list(ids[:window])})
    return out, cut


def min_k_score_sets(model, tokenizer, positive, negative, k: float, batch_size: int = 16):
    """Min-k% scores of the positive and the negative class's samples."""
    pad = tokenizer.pad_token_id
    return (min_k_scores(token_logprobs(model, positive, pad, batch_size, desc="min-k (positive)"), k),
            min_k_scores(token_logprobs(model, negative, pad, batch_size, desc="min-k (negative)"), k))


def min_k_auc(model, tokenizer, members, non_members, k: float, batch_size: int = 16) -> float:
    """AUC of the Min-k% score ranking `members` (positive class) above `non_members`."""
    return auc(*min_k_score_sets(model, tokenizer, members, non_members, k, batch_size))


class Side:
    """The forget set (the run's `role` data) or the held-out set (`source`): its documents (text data)
    or its samples as the run builds them, and its samples for any model and tokenizer."""

    def __init__(self, ctx, role: str = "", source: str = "", samples: bool = True):
        """`samples=False`: only read and check the side (no tokenizer, for `check`)."""
        self.name = source or getattr(ctx.cfg.data, role)
        docs = ctx.documents(role, source)
        self.unit = "pair" if docs is None else ctx.opts.privacy_unit
        self.texts = docs if self.unit == "document" else None
        if self.texts is not None and len(self.texts) < 2:
            raise UserError(f"privacy suite: '{self.name}' holds {len(self.texts)} document(s); the AUC ranks "
                            "documents (as MUSE), so each side needs several; expected a JSON/JSONL/CSV/parquet "
                            "file with one 'text' row per document, or --privacy_unit block to score the text "
                            "in data.max_length blocks")
        if not samples:
            if source:
                inputs.file_data(ctx, source)
            else:
                inputs.run_data(ctx, role)
            return
        self._own = None if self.texts is not None else (ctx.file_samples(source) if source else ctx.samples(role))
        self._tokenizer = ctx.tokenizer

    def samples(self, model, tokenizer) -> tuple[list[dict], int]:
        """(samples in `tokenizer`'s ids, how many documents were cut to `model`'s window)."""
        if self.texts is None:
            return _retokenize(self._own, self._tokenizer, tokenizer), 0
        return document_samples(self.texts, tokenizer, model.config.max_position_embeddings)


def check_options(o) -> None:
    """What the flags alone say."""
    if o.privacy_unit not in UNITS:
        raise UserError(f"--privacy_unit '{o.privacy_unit}' is unknown; expected one of {', '.join(UNITS)}")
    inputs.required_flags(("privacy",), o)
    check_k(o.min_k)


def check(ctx) -> None:
    """The inputs `run` reads, without the model: both sides' documents or rows, the retrained model."""
    o = ctx.opts
    check_options(o)
    Side(ctx, role="forget", samples=False)
    Side(ctx, source=o.holdout, samples=False)
    if o.retrained and o.reference_auc < 0:
        inputs.model("--retrained", o.retrained)


def run(ctx) -> dict:
    o = ctx.opts
    check_options(o)
    forget, holdout = Side(ctx, role="forget"), Side(ctx, source=o.holdout)
    (f, f_cut), (h, h_cut) = forget.samples(ctx.model, ctx.tokenizer), holdout.samples(ctx.model, ctx.tokenizer)
    # MUSE's orientation: held-out text is the positive class, the forget set the negative one
    metrics = {"min_k_auc": auc_ci(*min_k_score_sets(ctx.model, ctx.tokenizer, h, f, o.min_k, o.batch_size))}
    value = metrics["min_k_auc"]["value"]
    info = {"forget": ctx.cfg.data.forget, "holdout": o.holdout, "k": o.min_k, "n_forget": len(f),
            "n_holdout": len(h), "orientation": "holdout positive, forget negative (MUSE forget_holdout)",
            "unit": {"forget": forget.unit, "holdout": holdout.unit, "document": UNITS["document"],
                     "block": UNITS["block"], "pair": "one QA/prompt pair, labels as the run trained"}}
    if "document" in (forget.unit, holdout.unit):
        info["documents_cut"] = {"forget": f_cut, "holdout": h_cut,
                                 "window": ctx.model.config.max_position_embeddings}
    ref_auc = o.reference_auc if o.reference_auc >= 0 else None
    if ref_auc is not None:
        info["retrain_auc_from"] = "--reference_auc"
    elif o.retrained:
        def compute() -> float:
            from unlearn.model import load_for_eval

            model, tok = load_for_eval(o.retrained)
            # the retrained model's own tokenizer and window: both sets rebuilt for it
            return min_k_auc(model, tok, holdout.samples(model, tok)[0], forget.samples(model, tok)[0], o.min_k,
                             o.batch_size)
        ref_auc = ctx.cached({"what": "min_k_auc_muse", "model": o.retrained, "forget": ctx.cfg.data.forget,
                              "holdout": o.holdout, "unit": [forget.unit, holdout.unit]}, compute)
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
