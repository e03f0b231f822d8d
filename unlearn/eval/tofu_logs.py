"""TOFU's per-sample values -> the suite's metrics, TOFU_EVAL.json and TOFU_SUMMARY.json.

The tofu suite (unlearn.eval.tofu) measures, per split, each answer's avg_loss (mean NLL over its tokens
and EOS) and the greedy answers; `aggregate` turns them into open-unlearning's metrics with the formulas
of unlearn.eval.tofu_metrics (references there). TOFU's own published per-sample logs (locuslab/tofu
evaluate_util.py: avg_gt_loss, avg_paraphrased_loss, average_perturb_loss, generated_text) go through the
same function in tests/test_tofu.py, which pins what TOFU publishes from them (forget quality, model
utility of 9 numbers).

Model utility is open-unlearning's harmonic mean of nine numbers (configs/eval/tofu_metrics/
model_utility.yaml; TOFU's aggregate_eval_stat.py the same), reported as `model_utility` only when all
nine exist. The retain truth ratio needs TOFU's `retain_perturbed` split (on the hub only); without it
the harmonic mean of the other eight is reported as `model_utility_8`, never under open-unlearning's
key: it is a different number (on TOFU's own logs of four models it is 1.0-4.1% higher than the nine's,
and further off when the missing ratio is small, since a harmonic mean follows its smallest part).
"""

from __future__ import annotations

import numpy as np

from unlearn.eval import tofu_metrics as tm
from unlearn.eval.stats import mean_ci
from unlearn.eval.textmetrics import rouge_l_scores


def _by_index(values: list) -> dict[str, dict]:
    return {str(i): v for i, v in enumerate(values)}


def _prob_entry(avg_loss) -> dict:
    if isinstance(avg_loss, list):
        ok = [x for x in avg_loss if x is not None]
        return {"prob": tm.prob_of(ok), "avg_loss": ok} if len(ok) == len(avg_loss) else {"prob": None, "avg_loss": None}
    return {"prob": None if avg_loss is None else tm.prob_of(avg_loss), "avg_loss": avg_loss}


class Logs:
    """Per-sample values (TOFU_EVAL.json layout) and the eval.json metrics built from them."""

    def __init__(self):
        self.logs: dict[str, dict] = {}
        self.metrics: dict[str, dict] = {}

    def per_sample(self, name: str, entries: list[dict], values: list[float | None]) -> None:
        """A metric that is the mean of per-sample `values` (None = not scorable, left out)."""
        kept = [v for v in values if v is not None]
        self.metrics[name] = mean_ci(kept)
        self.logs[name] = {"agg_value": self.metrics[name]["value"], "value_by_index": _by_index(entries)}

    def scalar(self, name: str, value: float, n: int) -> None:
        self.metrics[name] = {"value": value, "n": n}
        self.logs[name] = {"agg_value": value}

    def probability(self, name: str, losses: list) -> None:
        entries = [_prob_entry(x) for x in losses]
        # several answers per question: open-unlearning averages their probabilities (aggregate_to_1D)
        probs = [None if e["prob"] is None else float(np.mean(e["prob"])) for e in entries]
        self.per_sample(name, entries, probs)

    def truth_ratio(self, name: str, true_losses: list, false_losses: list, forget: bool) -> None:
        ratios = [None if t is None or None in f else tm.truth_ratio(t, f) for t, f in zip(true_losses, false_losses)]
        agg = tm.closer_to_1_better if forget else tm.true_better
        self.per_sample(name, [{"score": r} for r in ratios], [None if r is None else agg([r]) for r in ratios])

    def over_options(self, name: str, true_losses: list, false_losses: list) -> None:
        values = [None if t is None or None in f else tm.prob_over_options(tm.prob_of(t), tm.prob_of(f))
                  for t, f in zip(true_losses, false_losses)]
        self.per_sample(name, [{"prob": v} for v in values], values)

    def rouge(self, name: str, split: dict) -> None:
        """ROUGE-L recall (Porter stemmer, TOFU's and open-unlearning's convention) of the greedy answers."""
        scores = rouge_l_scores(split["generations"], split["answers"], stemmer=True)
        entries = [{"rougeL_recall": s.recall, "rougeL_f1": s.fmeasure, "input": q, "ground_truth": a, "generation": g}
                   for s, q, a, g in zip(scores, split["questions"], split["answers"], split["generations"])]
        self.per_sample(name, entries, [s.recall for s in scores])

    def forget_ratios(self) -> list[float]:
        """This model's forget truth ratios, per question (what forget quality compares)."""
        return [e["score"] for e in self.logs["forget_truth_ratio"]["value_by_index"].values()]


def aggregate(measured: dict[str, dict]) -> tuple[Logs, dict]:
    """Every TOFU metric from per-sample values. `measured` has, per split (forget, retain, ra, wf):
    questions, answers, generations (greedy answers), true (avg_loss of the answer); forget also para
    (paraphrased answer), pert (each perturbed answer) and optionally extraction; retain para and pert
    when retain_perturbed was scored; ra and wf pert."""
    logs, info = Logs(), {}
    f = measured["forget"]
    logs.probability("forget_Q_A_Prob", f["true"])
    logs.probability("forget_Q_A_PARA_Prob", f["para"])
    logs.probability("forget_Q_A_PERT_Prob", f["pert"])
    logs.truth_ratio("forget_truth_ratio", f["para"], f["pert"], forget=True)
    logs.rouge("forget_Q_A_ROUGE", f)
    if "extraction" in f:
        logs.per_sample("extraction_strength", [{"score": v} for v in f["extraction"]], f["extraction"])
    r = measured["retain"]
    logs.probability("retain_Q_A_Prob", r["true"])
    logs.rouge("retain_Q_A_ROUGE", r)
    if r.get("para") is not None:
        logs.probability("retain_Q_A_PARA_Prob", r["para"])
        logs.probability("retain_Q_A_PERT_Prob", r["pert"])
        logs.truth_ratio("retain_Truth_Ratio", r["para"], r["pert"], forget=False)
    for key in ("ra", "wf"):
        s = measured[key]
        logs.probability(f"{key}_Q_A_Prob", s["true"])
        logs.probability(f"{key}_Q_A_PERT_Prob", s["pert"])
        logs.over_options(f"{key}_Q_A_Prob_normalised", s["true"], s["pert"])
        logs.truth_ratio(f"{key}_Truth_Ratio", s["true"], s["pert"], forget=False)
        logs.rouge(f"{key}_Q_A_ROUGE", s)
    parts = {k: logs.metrics[k]["value"] for k in tm.MODEL_UTILITY if k in logs.metrics}
    missing = [k for k in tm.MODEL_UTILITY if k not in parts]
    key = "model_utility" if not missing else tm.UTILITY_8
    assert missing in ([], ["retain_Truth_Ratio"]), missing  # every other part is always measured
    logs.scalar(key, tm.model_utility(parts), len(parts))
    info["model_utility_of"] = list(parts)
    if missing:
        info[tm.UTILITY_8] = ("harmonic mean of the eight numbers other than retain_Truth_Ratio, which needs "
                              "TOFU's retain_perturbed split (paraphrased and perturbed retain answers; hub only); "
                              "not open-unlearning's model_utility (nine numbers): on TOFU's own logs it reads "
                              "1-4% higher")
    return logs, info


def forget_quality_into(logs: Logs, retain_ratios: list[float]) -> None:
    """Forget quality: the KS p-value of this model's forget truth ratios against the retain model's."""
    ours = logs.forget_ratios()
    logs.scalar("forget_quality", tm.forget_quality(ours, retain_ratios), len(ours))


def summary(logs: Logs) -> dict[str, float]:
    """TOFU_SUMMARY.json: open-unlearning's summary keys that were measured (model_utility_8 in its place
    when only eight numbers exist)."""
    keys = [k for s in tm.SUMMARY for k in ((s, tm.UTILITY_8) if s == "model_utility" else (s,))]
    return {k: logs.metrics[k]["value"] for k in keys if k in logs.metrics}
