"""TOFU's metrics as formulas over per-answer numbers (no model here), as open-unlearning computes them
after its truth-ratio fix (PR #163; src/evals/metrics/memorization.py, privacy.py, utility.py and
utils.py::evaluate_probability; metric wiring in configs/eval/tofu_metrics/*.yaml). TOFU: Maini et al.
2024, "TOFU: A Task of Fictitious Unlearning for LLMs"; its own aggregate_eval_stat.py gives the same
numbers (its truth ratio is 1/tr below, which changes no KS p-value or aggregate) up to the 1e-10 guards:
tests/test_tofu.py pins forget quality and model utility on TOFU's published per-sample logs.

Per answer the model gives `avg_loss` = mean NLL (nats) over the answer's tokens, EOS included, and
`prob` = exp(-avg_loss) (length-normalised probability). Then, per question:
- probability:            prob of the answer; the metric is the mean over questions.
- probability_w_options:  prob(answer) / (prob(answer) + sum of the perturbed answers' probs + 1e-10),
                          TOFU's "probability over the options" on real authors and world facts.
- truth ratio:            tr = exp(-mean of the perturbed answers' avg_loss) / (exp(-avg_loss of the true
                          answer) + 1e-10): the geometric mean of the perturbed answers' probs over the
                          true (paraphrased on forget/retain, original on real authors/world facts) one.
  aggregated `closer_to_1_better` = mean(min(tr, 1/(tr + 1e-10))) on the forget set, and
  `true_better` = mean(max(0, 1 - tr)) elsewhere.
- forget quality:         the two-sample Kolmogorov-Smirnov p-value (scipy.stats.ks_2samp, two-sided,
                          its default exact/asymptotic choice) between the forget-set truth ratios of the
                          model and of a retain model (trained without the forget set).
- model utility:          the harmonic mean (scipy.stats.hmean) of the nine retain / real-authors /
                          world-facts numbers in MODEL_UTILITY; without TOFU's retain_perturbed split (no
                          retain truth ratio) the mean of the other eight goes under UTILITY_8 instead.
- privleak:               ((1 - mia_min_k) - (1 - ref)) / ((1 - ref) + 1e-10) x 100, ref = the retain
                          model's mia_min_k or 0.5 (src/evals/metrics/privacy.py::privleak; the AUC and its
                          orientation are in `unlearn.eval.tofu_mia`).
`read_ratios` reads a retain model's forget truth ratios from a saved evaluation (ours or open-unlearning's).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from unlearn import textfiles
from unlearn.errors import UserError

HUB_ID = "locuslab/TOFU"

RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
"""TOFU's forget splits and the retain split that complements each."""

HOLDOUT_OF = {"forget01": "holdout01", "forget05": "holdout05", "forget10": "holdout10"}
"""TOFU's held-out split (never trained on, same size and schema) set against each forget split."""

PRIVLEAK_REF = 0.5
"""open-unlearning's privleak `ref_value` (configs/eval/tofu_metrics/privleak.yaml): the retain model's
mia_min_k assumed when none is given."""

EPS = 1e-10
"""open-unlearning's guard in every ratio (truth ratio, probability over options, 1/tr)."""

MODEL_UTILITY = ("retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio",
                 "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio",
                 "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio")
"""The nine numbers of model_utility, by open-unlearning's metric names (configs/eval/tofu_metrics/model_utility.yaml)."""

UTILITY_8 = "model_utility_8"
"""The key of the harmonic mean of the eight numbers other than retain_Truth_Ratio, reported where TOFU's
retain_perturbed split is missing (unlearn.eval.tofu_logs): not open-unlearning's model_utility."""

SUMMARY = ("forget_quality", "forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "model_utility",
           "privleak", "extraction_strength")
"""Keys of open-unlearning's TOFU_SUMMARY.json (configs/eval/tofu.yaml's metrics). privleak needs the
holdout split; mia_min_k, its pre-computed AUC, is in TOFU_EVAL.json only, as there."""


def data_source(tofu_data: str) -> str:
    """Where the suite reads TOFU's splits: --tofu_data, else ../shared/data/tofu when present, else the hub."""
    from unlearn.eval.context import SHARED_DATA

    if tofu_data:
        return tofu_data
    return str(SHARED_DATA / "tofu") if (SHARED_DATA / "tofu").is_dir() else HUB_ID


def model_utility_key(source: str) -> str:
    """The key model utility will be reported under for TOFU data `source`: model_utility where the
    retain_perturbed split is at hand (the hub, or a folder with retain_perturbed.json(l)), else model_utility_8."""
    folder = Path(source)
    if not folder.is_dir() or any((folder / f"retain_perturbed{ext}").is_file() for ext in (".json", ".jsonl")):
        return "model_utility"
    return UTILITY_8


def check_forget_split(name: str) -> None:
    """Refuse an unknown --tofu_forget (here, torch-free: sweep planning checks eval args with it)."""
    if name not in RETAIN_OF:
        raise UserError(f"--tofu_forget {name!r} is unknown; expected one of {', '.join(RETAIN_OF)}")


def prob_of(avg_loss: float | Sequence[float]) -> float | list[float]:
    """Length-normalised probability exp(-avg_loss) of one answer (or of each of several)."""
    if isinstance(avg_loss, (int, float)):
        return math.exp(-avg_loss)
    return [math.exp(-x) for x in avg_loss]


def truth_ratio(true_avg_loss: float, false_avg_losses: Sequence[float]) -> float:
    """tr = exp(-mean_i false_avg_loss_i) / (exp(-true_avg_loss) + 1e-10) for one question."""
    return math.exp(-float(np.mean(false_avg_losses))) / (math.exp(-true_avg_loss) + EPS)


def closer_to_1_better(ratios: Sequence[float]) -> float:
    """Forget-set truth ratio: mean(min(tr, 1/tr)); 1 = true and false answers equally likely."""
    tr = np.asarray(ratios, dtype=float)
    return float(np.mean(np.minimum(tr, 1.0 / (tr + EPS))))


def true_better(ratios: Sequence[float]) -> float:
    """Retain / real-authors / world-facts truth ratio: mean(max(0, 1 - tr)); 1 = the true answer dominates."""
    tr = np.asarray(ratios, dtype=float)
    return float(np.mean(np.maximum(0.0, 1.0 - tr)))


def prob_over_options(true_prob: float, false_probs: Sequence[float]) -> float:
    """prob(answer) / (prob(answer) + sum of the perturbed answers' probs + 1e-10)."""
    return true_prob / (true_prob + float(np.sum(false_probs)) + EPS)


def extraction_strength(predicted: Sequence[int], answer: Sequence[int]) -> float:
    """1 - k/n for the smallest k at which the greedy (teacher-forced argmax) tokens equal the answer's
    from k to its end (n answer tokens, EOS excluded), as open-unlearning's extraction_strength
    (Carlini et al.'s extraction, memorization.py). As there, when not even the last token matches, k is
    left at n - 1 and the value is 1/n, not 0: kept so the numbers diff with theirs."""
    n = len(answer)
    k = 0
    for k in range(n):
        if list(predicted[k:]) == list(answer[k:]):
            break
    return 1.0 - k / n if n else 0.0


def forget_quality(model_ratios: Sequence[float], retain_model_ratios: Sequence[float]) -> float:
    """KS-test p-value between the forget-set truth ratios of the model and of the retain model."""
    from scipy.stats import ks_2samp  # scipy: the test TOFU and open-unlearning use

    return float(ks_2samp(np.asarray(model_ratios, dtype=float), np.asarray(retain_model_ratios, dtype=float)).pvalue)


def model_utility(values: dict[str, float]) -> float:
    """Harmonic mean of the given numbers (open-unlearning's hm_aggregate: scipy.stats.hmean)."""
    from scipy.stats import hmean

    return float(hmean(list(values.values())))


def privleak(mia_min_k: float, ref: float) -> float:
    """open-unlearning's TOFU privleak in percent: MUSE's relative AUC change on the flipped AUCs (1 - AUC)."""
    return ((1.0 - mia_min_k) - (1.0 - ref)) / ((1.0 - ref) + EPS) * 100.0


def read_ratios(path: Path, n: int, split: str) -> list[float]:
    """Forget truth ratios from a TOFU_EVAL.json (ours or open-unlearning's) or an eval.json of ours."""
    logs = textfiles.read_json(path, "--retain_model")
    if "suites" in logs:  # our eval.json: its tofu suite names the per-sample file beside it
        tofu = logs["suites"].get("tofu")
        if not tofu:
            raise UserError(f"--retain_model '{path}' has no tofu suite; expected an eval.json with --suite tofu")
        if tofu.get("info", {}).get("forget_split", split) != split:
            raise UserError(f"--retain_model '{path}' was evaluated on {tofu['info']['forget_split']}; expected {split}")
        return read_ratios(path.parent / tofu["files"][0], n, split)
    if logs.get("forget_split", split) != split:  # ours say which split; open-unlearning's do not
        raise UserError(f"--retain_model '{path}' holds {logs['forget_split']} truth ratios; expected {split}")
    entries = (logs.get("forget_truth_ratio") or {}).get("value_by_index")
    if not entries:
        raise UserError(f"--retain_model '{path}' holds no forget_truth_ratio values; expected a TOFU_EVAL.json "
                        "or an eval.json of a TOFU evaluation")
    ratios = [e["score"] for _, e in sorted(entries.items(), key=lambda kv: int(kv[0]))]
    if len(ratios) != n:
        raise UserError(f"--retain_model '{path}' has {len(ratios)} forget truth ratios; expected {n} "
                        f"({split}, same --limit)")
    return ratios
