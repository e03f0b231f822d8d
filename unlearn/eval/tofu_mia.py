"""TOFU's membership-inference number and privleak, as open-unlearning computes them (its
configs/eval/tofu_metrics/mia_min_k.yaml and privleak.yaml; src/evals/metrics/mia/min_k.py, mia/utils.py
::mia_auc and privacy.py::privleak). Min-k% prob: Shi et al. 2023, "Detecting Pretraining Data from
Large Language Models".

- Texts: the forget split's and TOFU's holdout split's (`holdoutNN` beside `forgetNN`, same schema)
  questions and answers in the checkpoint's prompt template; only the answer's tokens are scored, EOS
  excluded (their tokenwise_logprobs drops the EOS prediction), teacher-forced after the question.
- Score per text: open-unlearning's is -(mean of the floor(k x T) lowest token log-probs), at least one
  token, k = 0.4: the negative of the Min-k% score `unlearn.eval.privacy.min_k_scores` computes
  (reused here), so a higher score of theirs reads "less likely a member".
- mia_min_k: the ROC AUC of their score with the forget set as class 0 and the holdout as class 1, i.e.
  P(forget text's Min-k% log-prob > holdout text's), ties half. Orientation: 1 = the forget set is far
  more likely than held-out text (memorised), 0.5 = no difference. This is the reverse of MUSE's
  min_k_auc in `unlearn.eval.privacy` (holdout positive on the member-high score): mia_min_k = 1 - that.
- privleak = ((1 - mia_min_k) - (1 - ref)) / ((1 - ref) + 1e-10) x 100 (`tofu_metrics.privleak`): the
  MUSE PrivLeak on the flipped AUCs, ref = the retain model's mia_min_k (read from its TOFU evaluation,
  or computed) and open-unlearning's `ref_value` 0.5 when no retain model is given or its saved
  evaluation has no mia_min_k (as their privleak falls back). Negative = leaks more than the retain model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unlearn import data, textfiles
from unlearn.eval import tofu_metrics as tm
from unlearn.eval.generation import token_logprobs
from unlearn.eval.privacy import min_k_scores
from unlearn.eval.stats import auc, auc_ci

K = 0.4
"""open-unlearning's mia_min_k.yaml `k` (the fraction of lowest-probability answer tokens averaged); fixed
here so the number diffs with theirs (`--min_k` belongs to the MUSE-style privacy suite)."""


def answer_min_k(scorer, rows: list[dict], desc: str) -> list[float]:
    """Min-k% score (mean of the lowest log-probs, nats; higher = more member-like) of each row's answer."""
    samples = [data.qa_sample(r["question"], r["answer"], scorer.tok, scorer.template, scorer.max_length,
                              append_eos=False) for r in rows]
    return min_k_scores(token_logprobs(scorer.model, samples, scorer.tok.pad_token_id, scorer.batch, desc=desc), K)


def mia_auc(forget_scores: list[float], holdout_scores: list[float]) -> float:
    """open-unlearning's mia_min_k from Min-k% scores: P(forget score > holdout score), ties half."""
    return auc(forget_scores, holdout_scores)


def evaluate(scorer, forget: list[dict], holdout: list[dict]) -> tuple[dict, dict]:
    """(eval.json metric with a bootstrap interval, TOFU_EVAL.json entry in open-unlearning's layout and sign)."""
    f, h = answer_min_k(scorer, forget, "mia forget"), answer_min_k(scorer, holdout, "mia holdout")
    metric = auc_ci(f, h)

    def side(scores: list[float]) -> dict:
        theirs = [-s for s in scores]
        return {"agg_value": float(np.mean(theirs)), "value_by_index": {str(i): {"score": s} for i, s in enumerate(theirs)}}

    return metric, {"forget": side(f), "holdout": side(h), "auc": metric["value"], "agg_value": metric["value"]}


def read_mia(path: Path) -> float | None:
    """A retain model's mia_min_k from its eval.json (ours) or TOFU_EVAL.json (ours or open-unlearning's)."""
    logs = textfiles.read_json(path, "--retain_model")
    if "suites" in logs:
        metric = logs["suites"].get("tofu", {}).get("metrics", {}).get("mia_min_k")
        return None if metric is None else float(metric["value"])
    entry = logs.get("mia_min_k")
    return None if entry is None else float(entry["agg_value"] if isinstance(entry, dict) else entry)


def privleak_into(ctx, scorer, splits: dict, logs, info: dict, retain_scorer) -> None:
    """Add mia_min_k and privleak to `logs` (TOFU_EVAL/eval.json) when the holdout split exists, else say why."""
    o = ctx.opts
    holdout_name = tm.HOLDOUT_OF[o.tofu_forget]
    if not splits["holdout"]:
        info["privleak"] = (f"not computed: privleak (and its mia_min_k) needs TOFU's {holdout_name} split, which only "
                            f"the hub's locuslab/TOFU has; expected {holdout_name}.json in '{info['source']}'")
        return
    forget, holdout = splits["forget"], splits["holdout"]
    logs.metrics["mia_min_k"], logs.logs["mia_min_k"] = evaluate(scorer, forget, holdout)
    ref, where = retain_mia(ctx, forget, holdout, retain_scorer)
    value = tm.privleak(logs.metrics["mia_min_k"]["value"], ref)
    logs.metrics["privleak"] = {"value": value, "n": logs.metrics["mia_min_k"]["n"]}
    logs.logs["privleak"] = {"agg_value": value}
    info["privleak_reference"] = {"mia_min_k": ref, "from": where, "holdout_split": holdout_name, "k": K}


def retain_mia(ctx, forget: list[dict], holdout: list[dict], retain_scorer) -> tuple[float, str]:
    """The retain model's mia_min_k: from its saved evaluation, computed from its model, or 0.5."""
    o = ctx.opts
    if not o.retain_model:
        return tm.PRIVLEAK_REF, "open-unlearning's default ref_value (no --retain_model)"
    given = Path(o.retain_model)
    saved = given if given.is_file() else given / "eval.json"
    value = read_mia(saved) if saved.is_file() else None
    if value is not None:
        return value, str(saved)
    if given.is_file():
        return tm.PRIVLEAK_REF, f"open-unlearning's default ref_value ({given} holds no mia_min_k)"

    def compute() -> float:
        scorer = retain_scorer(ctx)
        return mia_auc(answer_min_k(scorer, forget, "retain model mia forget"),
                       answer_min_k(scorer, holdout, "retain model mia holdout"))

    key = {"what": "tofu_mia_min_k", "model": str(given.resolve()) if given.exists() else o.retain_model,
           "forget": [r["question"] for r in forget], "holdout": [r["question"] for r in holdout]}
    return ctx.cached(key, compute), o.retain_model
