"""TOFU metrics pinned to their definitions (open-unlearning after PR #163) and the suite end to end on
the demo's tiny OPT and the shared TOFU files: per-sample values, the summary keys, forget quality
against a retain model's saved evaluation, model utility without retain_perturbed."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_eval_job import make_checkpoint
from unlearn.errors import UserError
from unlearn.eval import tofu
from unlearn.eval import tofu_metrics as tm
from unlearn.eval.context import EvalOptions
from unlearn.eval.job import evaluate_checkpoint

FAST = dict(suites=("tofu",), tofu_forget="forget01", limit=4, tofu_max_new_tokens=4, batch_size=8)


# ----------------------------------------------------------------------------- formulas, by hand

def test_truth_ratio_is_the_geometric_mean_of_false_probs_over_the_true_prob():
    # exp(-mean(0.5, 1.5, 2.5)) / exp(-1.0) = exp(-0.5)
    assert tm.truth_ratio(1.0, [0.5, 1.5, 2.5]) == pytest.approx(0.6065306597126334, rel=1e-9)
    assert tm.truth_ratio(2.0, [2.0]) == pytest.approx(1.0, rel=1e-9)


def test_truth_ratio_aggregators():
    # forget: min(tr, 1/tr) -> 0.5, 0.5, 1.0; others: max(0, 1 - tr) -> 0.75, 0, 0.5
    assert tm.closer_to_1_better([0.5, 2.0, 1.0]) == pytest.approx(2 / 3, rel=1e-9)
    assert tm.true_better([0.25, 1.5, 0.5]) == pytest.approx(5 / 12, rel=1e-9)


def test_probability_over_options_and_length_normalised_probability():
    assert tm.prob_over_options(0.5, [0.25, 0.25]) == pytest.approx(0.5, rel=1e-9)
    assert tm.prob_over_options(0.6, [0.1, 0.05, 0.05]) == pytest.approx(0.75, rel=1e-9)
    assert tm.prob_of(math.log(4)) == pytest.approx(0.25, rel=1e-12)


def test_forget_quality_is_the_ks_p_value():
    # disjoint samples of 5 and 5: D = 1, exact p = 2 / C(10, 5) = 2 / 252
    assert tm.forget_quality([0.1, 0.2, 0.3, 0.4, 0.5], [0.6, 0.7, 0.8, 0.9, 1.0]) == pytest.approx(2 / 252, rel=1e-9)
    # overlapping samples of 5 and 6 (scipy.stats.ks_2samp, exact mode): D = 3/5
    assert tm.forget_quality([0.2, 0.5, 0.9, 1.3, 0.7], [0.4, 1.1, 1.6, 2.0, 2.4, 3.1]) == \
        pytest.approx(0.10822510822510821, rel=1e-9)


def test_extraction_strength_is_one_minus_the_first_fully_extracted_suffix():
    assert tm.extraction_strength([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0            # k = 0
    assert tm.extraction_strength([9, 2, 3, 4], [1, 2, 3, 4]) == 0.75           # k = 1
    assert tm.extraction_strength([1, 9, 3, 4], [1, 2, 3, 4]) == 0.5            # k = 2
    # nothing extracted: open-unlearning's loop ends at k = n - 1, so 1/n (kept for parity)
    assert tm.extraction_strength([1, 2, 3, 9], [1, 2, 3, 4]) == 0.25
    assert tm.extraction_strength([], []) == 0.0


def test_model_utility_is_the_harmonic_mean():
    assert tm.model_utility({"a": 0.5, "b": 0.25, "c": 1.0}) == pytest.approx(3 / 7, rel=1e-12)
    assert tm.model_utility({"a": 0.4, "b": 0.0}) == 0.0


# ----------------------------------------------------------------------------- TOFU's own published logs

def _tofu_logs(shared_data: Path, model: str) -> dict:
    """TOFU's per-sample logs of one model (locuslab/tofu evaluate_util.py, first 300 rows of each split; see
    eval_logs/SOURCE.txt) in the layout our aggregation reads: generated_text is [prompt, generation, ground
    truth]; real authors and world facts score the true answer where the others score the paraphrase."""
    folder = shared_data / "tofu" / "eval_logs" / model

    def split(name: str, paraphrased: bool = True) -> dict:
        log = json.loads((folder / name).read_text())
        idx = sorted(log["avg_gt_loss"], key=int)
        text = [log["generated_text"][i] for i in idx]
        out = {"questions": [t[0] for t in text], "generations": [t[1] for t in text], "answers": [t[2] for t in text],
               "true": [log["avg_gt_loss"][i] for i in idx], "pert": [log["average_perturb_loss"][i] for i in idx],
               "tofu_rouge": [log["rougeL_recall"][i] for i in idx]}
        if paraphrased:
            out["para"] = [log["avg_paraphrased_loss"][i] for i in idx]
        return out

    return {"forget": split("eval_log_forget.json"), "retain": split("eval_log.json"),
            "ra": split("eval_real_author_wo_options.json", False), "wf": split("eval_real_world_wo_options.json", False)}


@pytest.fixture(scope="module")
def tofu_published(shared_data):
    from unlearn.eval import tofu_logs

    return {m: (_tofu_logs(shared_data, m), tofu_logs.aggregate(_tofu_logs(shared_data, m))[0])
            for m in ("llama2-7b_full", "llama2-7b_retain90", "phi_full", "phi_retain90")}


@pytest.mark.parametrize("family,published", [("llama2-7b", 1.834066e-21), ("phi", 2.194274e-16)])
def test_forget_quality_of_tofus_own_logs_is_what_tofu_publishes(tofu_published, family, published):
    """Full model vs retain90 model on forget10 (300 questions), through the suite's aggregation."""
    from unlearn.eval import tofu_logs

    _, full = tofu_published[f"{family}_full"]
    _, retain = tofu_published[f"{family}_retain90"]
    tofu_logs.forget_quality_into(full, retain.forget_ratios())
    assert full.metrics["forget_quality"] == {"value": pytest.approx(published, rel=1e-6), "n": 300}


def test_model_utility_of_tofus_own_logs_is_what_tofu_publishes(tofu_published):
    """Llama-2-7b full: 0.622625, the harmonic mean of nine (TOFU prints 0.6227); per-sample ROUGE-L recall
    recomputed from TOFU's generations equals its logged rougeL_recall. Without the retain truth ratio our
    model_utility_8 is TOFU's eight other numbers' harmonic mean, written here with TOFU's own formulas
    (aggregate_eval_stat.py), and sits 4% above."""
    from unlearn.eval import tofu_logs

    raw, logs = tofu_published["llama2-7b_full"]
    assert logs.metrics["model_utility"] == {"value": pytest.approx(0.622625, abs=5e-7), "n": 9}
    for key, split in (("forget", "forget_Q_A_ROUGE"), ("retain", "retain_Q_A_ROUGE"), ("ra", "ra_Q_A_ROUGE"),
                       ("wf", "wf_Q_A_ROUGE")):
        ours = [e["rougeL_recall"] for e in logs.logs[split]["value_by_index"].values()]
        assert ours == pytest.approx(raw[key]["tofu_rouge"], abs=1e-12)
    r, ra, wf = raw["retain"], raw["ra"], raw["wf"]
    eight = [np.mean(np.exp(-np.array(r["true"]))), np.mean(r["tofu_rouge"])]
    for s in (ra, wf):
        true, false = np.exp(-np.array(s["true"])), np.exp(-np.array(s["pert"]))
        eight += [np.mean(true / (true + false.sum(-1))), np.mean(s["tofu_rouge"]),
                  np.mean(np.maximum(0, 1 - 1 / np.exp(np.array(s["pert"]).mean(-1) - np.array(s["true"]))))]
    want = 8 / sum(1 / x for x in eight)
    offline = tofu_logs.aggregate({**raw, "retain": {k: v for k, v in r.items() if k not in ("para", "pert")}})[0]
    assert "model_utility" not in offline.metrics
    # (open-unlearning's 1e-10 guards in the ratios, which TOFU's formulas lack, move the 9th digit)
    assert offline.metrics["model_utility_8"] == {"value": pytest.approx(want, rel=1e-8), "n": 8}
    assert want / 0.622625 - 1 == pytest.approx(0.0405, abs=5e-4)
    # the README's 1.0-4.1%: the eight numbers' harmonic mean over the nine's, on each of TOFU's four logs
    excess = {}
    for model, (_, nine) in tofu_published.items():
        parts = [nine.metrics[k]["value"] for k in tm.MODEL_UTILITY if k != "retain_Truth_Ratio"]
        excess[model] = round(8 / sum(1 / x for x in parts) / nine.metrics["model_utility"]["value"] - 1, 4)
    assert excess == {"llama2-7b_full": 0.0405, "llama2-7b_retain90": 0.0393, "phi_full": 0.0103,
                      "phi_retain90": 0.0123}


# ----------------------------------------------------------------------------- the suite on a tiny model

@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, demo_dir, shared_data):
    ckpt = make_checkpoint(tmp_path_factory.mktemp("tofu") / "run", 3, demo_dir)
    result = evaluate_checkpoint(ckpt, EvalOptions(tofu_data=str(shared_data / "tofu"), **FAST))
    return ckpt, result


def _by_hand_avg_loss(ckpt: Path, question: str, answer: str) -> float:
    """Mean NLL of ' answer</s>' after the demo template's '### Question: q\\n ### Answer:', by a plain forward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    head = tok(f"### Question: {question}\n ### Answer:")["input_ids"]
    tail = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([head + tail])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    picked = logp[len(head) - 1:, :].gather(-1, ids[0, len(head):, None]).squeeze(-1)
    return float(-picked.mean())


def _by_hand_extraction(ckpt: Path, question: str, answer: str) -> float:
    """1 - k/n over the answer's tokens (no EOS) from a plain forward's argmax, k the first fully matching suffix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    head = tok(f"### Question: {question}\n ### Answer:")["input_ids"]
    tail = tok(" " + answer, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        predicted = model(input_ids=torch.tensor([head + tail])).logits[0].argmax(-1).tolist()
    guess = predicted[len(head) - 1:len(head) - 1 + len(tail)]
    matching = [k for k in range(len(tail)) if guess[k:] == tail[k:]]
    return 1 - (matching[0] if matching else len(tail) - 1) / len(tail)


def test_per_sample_probabilities_and_truth_ratios_follow_the_definitions(evaluated, shared_data):
    ckpt, result = evaluated
    logs = json.loads((ckpt / "TOFU_EVAL.json").read_text())
    row = json.loads((shared_data / "tofu" / "forget01.json").read_text())[0]
    first = logs["forget_Q_A_Prob"]["value_by_index"]["0"]
    assert first["avg_loss"] == pytest.approx(_by_hand_avg_loss(ckpt, row["question"], row["answer"]), rel=1e-4)
    assert first["prob"] == pytest.approx(math.exp(-first["avg_loss"]), rel=1e-9)
    para = logs["forget_Q_A_PARA_Prob"]["value_by_index"]["0"]["avg_loss"]
    assert para == pytest.approx(_by_hand_avg_loss(ckpt, row["question"], row["paraphrased_answer"]), rel=1e-4)
    pert = logs["forget_Q_A_PERT_Prob"]["value_by_index"]["0"]["avg_loss"]
    assert len(pert) == 5
    assert pert[2] == pytest.approx(_by_hand_avg_loss(ckpt, row["question"], row["perturbed_answer"][2]), rel=1e-4)
    tr = logs["forget_truth_ratio"]["value_by_index"]["0"]["score"]
    assert tr == pytest.approx(math.exp(-sum(pert) / 5) / math.exp(-para), rel=1e-6)
    assert logs["extraction_strength"]["value_by_index"]["0"]["score"] == \
        pytest.approx(_by_hand_extraction(ckpt, row["question"], row["answer"]), rel=1e-9)
    ratios = [e["score"] for e in logs["forget_truth_ratio"]["value_by_index"].values()]
    assert result["suites"]["tofu"]["metrics"]["forget_truth_ratio"]["value"] == \
        pytest.approx(sum(min(r, 1 / r) for r in ratios) / len(ratios), rel=1e-9)


def test_model_utility_without_retain_perturbed_is_the_mean_of_eight_under_its_own_key(evaluated):
    """Never open-unlearning's key for a number it would compute differently: model_utility_8, with a note."""
    ckpt, result = evaluated
    suite = result["suites"]["tofu"]
    parts = [suite["metrics"][k]["value"] for k in tm.MODEL_UTILITY if k != "retain_Truth_Ratio"]
    assert len(parts) == 8 and "retain_Truth_Ratio" not in suite["metrics"]
    expected = 0.0 if min(parts) == 0 else len(parts) / sum(1 / p for p in parts)
    assert "model_utility" not in suite["metrics"] and "eval/tofu/model_utility" not in result["scalars"]
    assert suite["metrics"]["model_utility_8"] == {"value": pytest.approx(expected, rel=1e-9), "n": 8}
    assert "retain_Truth_Ratio" not in suite["info"]["model_utility_of"]
    assert "retain_perturbed" in suite["info"]["model_utility_8"] and "not open-unlearning's" in \
        suite["info"]["model_utility_8"]
    # what was measured: --limit 4 cuts the 400 retain questions too, and eval.json says so
    assert suite["info"]["retain_questions"].startswith("first 4 of retain99 ")
    assert suite["info"]["questions"] == {"forget01_perturbed": 4, "retain99": 4, "real_authors_perturbed": 4,
                                          "world_facts_perturbed": 4}
    logs = json.loads((ckpt / "TOFU_EVAL.json").read_text())
    assert "model_utility" not in logs and logs["model_utility_8"]["agg_value"] == pytest.approx(expected, rel=1e-9)


def test_summary_keys_are_open_unlearnings(evaluated):
    ckpt, result = evaluated
    summary = json.loads((ckpt / "TOFU_SUMMARY.json").read_text())
    # no retain model given: forget_quality is left out (open-unlearning's summary skips a None value)
    assert sorted(summary) == sorted(["forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "model_utility_8",
                                      "extraction_strength"])
    assert "--retain_model" in result["suites"]["tofu"]["info"]["forget_quality"]
    assert summary == result["suites"]["tofu"]["info"]["summary"]


def test_forget_quality_against_a_saved_open_unlearning_eval(evaluated, tmp_path, shared_data):
    ckpt, _ = evaluated
    # a retain model whose 4 truth ratios all exceed every ratio of this model: D = 1, p = 2 / C(8, 4)
    theirs = {"forget_truth_ratio": {"agg_value": 0.5, "value_by_index": {str(i): {"score": 1e9} for i in range(4)}}}
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(theirs))
    result = evaluate_checkpoint(ckpt, EvalOptions(tofu_data=str(shared_data / "tofu"), force=True,
                                                   retain_model=str(tmp_path / "TOFU_EVAL.json"), **FAST))
    assert result["suites"]["tofu"]["metrics"]["forget_quality"]["value"] == pytest.approx(2 / 70, rel=1e-9)
    assert json.loads((ckpt / "TOFU_SUMMARY.json").read_text())["forget_quality"] == pytest.approx(2 / 70, rel=1e-9)
    assert result["scalars"]["eval/tofu/forget_quality"] == pytest.approx(2 / 70, rel=1e-9)
    theirs["forget_truth_ratio"]["value_by_index"].pop("3")
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(theirs))
    with pytest.raises(UserError, match="has 3 forget truth ratios; expected 4"):
        evaluate_checkpoint(ckpt, EvalOptions(tofu_data=str(shared_data / "tofu"), force=True,
                                              retain_model=str(tmp_path / "TOFU_EVAL.json"), **FAST))


def test_the_model_as_its_own_retain_model_has_forget_quality_one(evaluated, shared_data, tmp_path):
    ckpt, _ = evaluated
    other = tmp_path / "retain-model"
    shutil.copytree(ckpt, other, ignore=shutil.ignore_patterns("eval.json", "TOFU_*"))
    result = evaluate_checkpoint(ckpt, EvalOptions(tofu_data=str(shared_data / "tofu"), force=True,
                                                   retain_model=str(other), **FAST))
    assert result["suites"]["tofu"]["metrics"]["forget_quality"]["value"] == 1.0
    assert result["suites"]["tofu"]["info"]["retain_model"] == str(other)


def test_retain_perturbed_when_present_gives_the_ninth_number(tmp_path, demo_dir, shared_data):
    """A folder laid out as the hub's configs, with a retain_perturbed.json (made up here for the test)."""
    folder = tmp_path / "tofu"
    folder.mkdir()
    for name in ("forget01.json", "real_authors_perturbed.json", "world_facts_perturbed.json"):
        shutil.copy(shared_data / "tofu" / name, folder / name)
    rows = [{"question": "Who wrote the test?", "answer": "Ann wrote it.", "paraphrased_answer": "It was Ann.",
             "perturbed_answer": ["It was Bob.", "It was Cy."]}] * 2
    (folder / "retain_perturbed.json").write_text(json.dumps(rows))
    ckpt = make_checkpoint(tmp_path / "run", 1, demo_dir)
    result = evaluate_checkpoint(ckpt, EvalOptions(tofu_data=str(folder), **FAST))
    suite = result["suites"]["tofu"]
    assert "model_utility_8" not in suite["metrics"] and suite["metrics"]["model_utility"]["n"] == 9
    assert json.loads((ckpt / "TOFU_SUMMARY.json").read_text())["model_utility"] == \
        suite["metrics"]["model_utility"]["value"]
    logs = json.loads((ckpt / "TOFU_EVAL.json").read_text())
    para = logs["retain_Q_A_PARA_Prob"]["value_by_index"]["0"]["avg_loss"]
    pert = logs["retain_Q_A_PERT_Prob"]["value_by_index"]["0"]["avg_loss"]
    tr = math.exp(-(pert[0] + pert[1]) / 2) / math.exp(-para)
    assert suite["metrics"]["retain_Truth_Ratio"]["value"] == pytest.approx(max(0.0, 1 - tr), rel=1e-6)


def _by_hand_min_k_score(ckpt: Path, question: str, answer: str) -> float:
    """open-unlearning's Min-k score: -(mean of the floor(0.4 T) lowest log-probs of the answer's T tokens, no EOS)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    head = tok(f"### Question: {question}\n ### Answer:")["input_ids"]
    tail = tok(" " + answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + tail])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    picked = sorted(logp[len(head) - 1:].gather(-1, ids[0, len(head):, None]).squeeze(-1).tolist())
    lowest = picked[:max(1, int(0.4 * len(picked)))]
    return -sum(lowest) / len(lowest)


def _auc_by_counting(class0: list[float], class1: list[float]) -> float:
    """ROC AUC with class 1 positive: the share of (class0, class1) pairs where class 1 scores higher, ties half."""
    wins = sum((b > a) + 0.5 * (b == a) for a in class0 for b in class1)
    return wins / (len(class0) * len(class1))


def test_mia_min_k_and_privleak_with_a_holdout_split(tmp_path, demo_dir, shared_data):
    """A folder laid out as the hub's configs, with a holdout01.json (made-up questions, TOFU's schema)."""
    folder = tmp_path / "tofu"
    folder.mkdir()
    for name in ("forget01.json", "retain99.json", "real_authors_perturbed.json", "world_facts_perturbed.json"):
        (folder / name).symlink_to(shared_data / "tofu" / name)
    holdout = [{"question": f"Where was the author {n} born?", "answer": f"{n} was born in {town}, in the year {year}."}
               for n, town, year in (("Ada Kern", "Lyon", 1961), ("Bo Lindqvist", "Uppsala", 1974),
                                     ("Caro Mbeki", "Durban", 1958), ("Dan Ruiz", "Cusco", 1990))]
    (folder / "holdout01.json").write_text(json.dumps(holdout))
    forget = json.loads((shared_data / "tofu" / "forget01.json").read_text())[:4]
    ckpt = make_checkpoint(tmp_path / "run", 1, demo_dir)

    result = evaluate_checkpoint(ckpt, EvalOptions(tofu_data=str(folder), **FAST))
    f = [_by_hand_min_k_score(ckpt, r["question"], r["answer"]) for r in forget]
    h = [_by_hand_min_k_score(ckpt, r["question"], r["answer"]) for r in holdout]
    auc = _auc_by_counting(f, h)  # open-unlearning's labels: forget 0, holdout 1, on their score
    suite = result["suites"]["tofu"]
    assert suite["metrics"]["mia_min_k"]["value"] == pytest.approx(auc, abs=1e-12)
    # no retain model: open-unlearning's ref_value 0.5
    assert suite["metrics"]["privleak"]["value"] == pytest.approx(((1 - auc) - 0.5) / 0.5 * 100, rel=1e-6)
    logs = json.loads((ckpt / "TOFU_EVAL.json").read_text())
    assert logs["mia_min_k"]["forget"]["value_by_index"]["2"]["score"] == pytest.approx(f[2], rel=1e-4)
    assert logs["mia_min_k"]["holdout"]["value_by_index"]["1"]["score"] == pytest.approx(h[1], rel=1e-4)
    summary = json.loads((ckpt / "TOFU_SUMMARY.json").read_text())
    assert summary["privleak"] == suite["metrics"]["privleak"]["value"] and "mia_min_k" not in summary

    # the retain model's mia_min_k from its saved TOFU_EVAL.json (open-unlearning's layout)
    theirs = {"forget_truth_ratio": {"value_by_index": {str(i): {"score": 0.5} for i in range(4)}},
              "mia_min_k": {"agg_value": 0.3}}
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(theirs))
    result = evaluate_checkpoint(ckpt, EvalOptions(tofu_data=str(folder), force=True,
                                                   retain_model=str(tmp_path / "TOFU_EVAL.json"), **FAST))
    assert result["suites"]["tofu"]["metrics"]["privleak"]["value"] == \
        pytest.approx(((1 - auc) - 0.7) / 0.7 * 100, rel=1e-6)
    assert result["suites"]["tofu"]["info"]["privleak_reference"]["mia_min_k"] == 0.3
    # a retain model folder without a saved evaluation: its mia_min_k is computed (here the same model: privleak 0)
    other = tmp_path / "retain-model"
    shutil.copytree(ckpt, other, ignore=shutil.ignore_patterns("eval.json", "TOFU_*"))
    result = evaluate_checkpoint(ckpt, EvalOptions(tofu_data=str(folder), force=True, retain_model=str(other), **FAST))
    assert result["suites"]["tofu"]["info"]["privleak_reference"]["mia_min_k"] == pytest.approx(auc, abs=1e-12)
    assert result["suites"]["tofu"]["metrics"]["privleak"]["value"] == pytest.approx(0.0, abs=1e-9)


def test_privleak_without_the_holdout_split_says_why(evaluated):
    _, result = evaluated
    suite = result["suites"]["tofu"]
    assert "privleak" not in suite["metrics"] and "mia_min_k" not in suite["metrics"]
    assert "needs TOFU's holdout01 split" in suite["info"]["privleak"]
    assert "expected holdout01.json in" in suite["info"]["privleak"]


def test_bad_split_names_are_one_line_errors(tmp_path, demo_dir, shared_data):
    ckpt = make_checkpoint(tmp_path / "run", 1, demo_dir)
    with pytest.raises(UserError, match="--tofu_forget 'forget20' is unknown; expected one of forget01, forget05"):
        evaluate_checkpoint(ckpt, EvalOptions(**{**FAST, "tofu_forget": "forget20"}))
    with pytest.raises(UserError, match="TOFU split 'forget01_perturbed' not found in"):
        evaluate_checkpoint(ckpt, EvalOptions(tofu_data=str(tmp_path), **FAST))
    assert tofu.load_split(str(shared_data / "tofu"), "retain_perturbed") is None


# ----------------------------------------------------------------------------- sweeps

def test_a_tofu_grid_reports_forget_quality_against_model_utility_by_default(tmp_path):
    """Model utility under the key the eval jobs will write: model_utility_8 for TOFU data without
    retain_perturbed, model_utility with it (a folder holding it, or the hub)."""
    import csv

    import yaml

    from tests.test_sweep_grid import _fake_checkpoint
    from unlearn.eval.job import check_args
    from unlearn.sweep.grid import load_sweep, plan
    from unlearn.sweep.report import write_report

    offline = tmp_path / "tofu"
    offline.mkdir()

    def grid(*data: str):
        doc = {"name": "t", "output_dir": str(tmp_path / "sweeps"), "base": {"train": {"max_steps": 2}},
               "axes": {"method.forget_loss": ["ga", "npo", "simnpo"]},
               "eval": {"args": ["--suite", "tofu", "--tofu_forget", "forget01", "--retain_model", "retain/eval.json",
                                 *data]}}
        (tmp_path / "grid.yaml").write_text(yaml.safe_dump(doc))
        return load_sweep(tmp_path / "grid.yaml")

    sweep = grid("--tofu_data", str(offline))
    assert (sweep.report.forget_metric, sweep.report.forget_goal) == ("tofu/forget_quality", "max")
    assert (sweep.report.utility_metric, sweep.report.utility_goal) == ("tofu/model_utility_8", "max")
    pts = plan(sweep)
    # (forget quality, model utility): ga (0.9, 0.1) and npo (0.5, 0.4) are both on the front; simnpo
    # (0.4, 0.3) is dominated by npo
    for p, (fq, mu) in zip(pts, [(0.9, 0.1), (0.5, 0.4), (0.4, 0.3)]):
        _fake_checkpoint(sweep.folder, p.name, 2, {"tofu/forget_quality": fq, "tofu/model_utility_8": mu})
    csv_path, png = write_report(sweep, pts)
    assert [r["pareto"] for r in csv.DictReader(csv_path.open())] == ["1", "1", "0"]
    assert png is not None
    assert grid("--tofu_data=locuslab/TOFU").report.utility_metric == "tofu/model_utility"
    (offline / "retain_perturbed.json").write_text("[]")
    assert grid("--tofu_data", str(offline)).report.utility_metric == "tofu/model_utility"
    with pytest.raises(UserError, match="unknown; expected one of forget01"):
        check_args(["--suite", "tofu", "--tofu_forget", "forget20"])  # evaluate.py's parser, at planning


# ----------------------------------------------------------------------------- configs/tofu

SPLITS = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("loss", ["ga", "npo", "simnpo"])
def test_every_unlearning_preset_passes_preflight(split, loss):
    from tests.conftest import ROOT
    from unlearn.config_io import load_config
    from unlearn.train import engine as engines
    from unlearn.train import preflight

    tofu_dir = ROOT / "configs" / "tofu"
    cfg, patch = load_config([str(tofu_dir / f) for f in ("unlearn.yaml", f"{split}.yaml", f"{loss}.yaml")])
    ds = engines.read_ds_config(ROOT / "ds_configs" / "zero2.json", patch)
    preflight.check_config(engines.resolve_micro_batch(cfg, 1), ds, 1)
    d = cfg.data
    assert (d.forget, d.forget_subset, d.retain_subset) == (tofu.HUB_ID, split, SPLITS[split])
    assert d.forget_revision == d.retain_revision == tofu.HUB_REVISION
    assert cfg.method.forget_loss == loss and cfg.train.epochs == 10 and cfg.train.global_batch_size == 32
    n_forget = {"forget01": 40, "forget05": 200, "forget10": 400}[split]
    assert cfg.optim.warmup_steps == math.ceil(n_forget / 32)  # one epoch, as open-unlearning's warmup_epochs: 1


@pytest.mark.parametrize("retain", ["retain90", "retain95", "retain99"])
def test_retain_models_train_on_the_retain_split_only(retain):
    from tests.conftest import ROOT
    from unlearn.config import FINETUNE_DEFAULTS
    from unlearn.config_io import load_config

    tofu_dir = ROOT / "configs" / "tofu"
    cfg, _ = load_config([str(tofu_dir / "finetune.yaml"), str(tofu_dir / f"{retain}.yaml")],
                         defaults=FINETUNE_DEFAULTS)
    assert (cfg.data.retain, cfg.data.retain_subset, cfg.method.forget_loss) == (tofu.HUB_ID, retain, "none")
    assert cfg.run.export_dir != load_config([str(tofu_dir / "finetune.yaml")])[0].run.export_dir


def test_local_tofu_files_train_on_answer_tokens_only(shared_data, demo_dir):
    """The presets' data with the README's local-file override: question/answer rows, labels on the answer + EOS."""
    from transformers import AutoTokenizer

    from tests.conftest import ROOT
    from unlearn import data
    from unlearn.config_io import load_config

    tofu_dir = ROOT / "configs" / "tofu"
    cfg, _ = load_config([str(tofu_dir / "unlearn.yaml"), str(tofu_dir / "forget01.yaml")],
                         [f"data.forget={shared_data / 'tofu' / 'forget01.json'}"])
    tok = AutoTokenizer.from_pretrained(demo_dir / "init")
    samples = data.build_samples(cfg.data.forget, "forget", tok, cfg.data)
    assert len(samples) == 40
    row = json.loads((shared_data / "tofu" / "forget01.json").read_text())[0]
    labelled = [t for t in samples[0]["labels"] if t != data.IGNORE]
    assert labelled == tok(" " + row["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert tok.decode(samples[0]["input_ids"][:len(samples[0]["input_ids"]) - len(labelled)],
                      skip_special_tokens=True) == f"Question: {row['question']}\nAnswer:"


# ----------------------------------------------------------------------------- make tofu-mini, scaled down

MINI_SCALE = ["train.epochs=0", "train.max_steps=2", "train.save_engine_state=false"]
"""The one place `make tofu-mini` is scaled down for the suite: 2 steps per stage (and --limit 4 in MINI_EVAL, one
8-token alternate per question in MINI_ALTPO)."""
MINI_ALTPO = dict(repeats=1, max_new_tokens=8)
MINI_EVAL = dict(suites=("tofu",), tofu_forget="forget01", limit=4, tofu_max_new_tokens=4, batch_size=8, force=True)


@pytest.mark.slow
def test_tofu_mini_pipeline_scaled_down(tmp_path, shared_data, dist_env, monkeypatch):
    """make tofu-mini's steps in order, with its configs as shipped (relative .cache/ paths, here under tmp)."""
    from tests.conftest import ROOT
    from unlearn import altpo, tofu_mini, whp
    from unlearn.config import FINETUNE_DEFAULTS
    from unlearn.config_io import load_config
    from unlearn.train import task_vector
    from unlearn.train.loop import train

    monkeypatch.chdir(tmp_path)
    conf = ROOT / "configs" / "tofu"
    ds = str(ROOT / "ds_configs" / "zero2.json")
    mini = tofu_mini.build(".cache/tofu-mini", shared_data / "tofu")
    assert [len(json.loads((mini / f"{n}.json").read_text())) for n in ("forget", "retain", "world")] == [40, 40, 80]

    def stage(files: list[str], *extra: str, finetune: bool = False) -> Path:
        cfg, patch = load_config(paths(files), [*MINI_SCALE, *extra], defaults=FINETUNE_DEFAULTS if finetune else None)
        return train(cfg, ds, patch, overwrite=True)

    def paths(files: list[str]) -> list[str]:
        return [str(ROOT / "configs" / f) if "/" in f else str(conf / f) for f in files]

    stage(["mini_finetune.yaml"], finetune=True)
    stage(["mini_finetune.yaml", "mini_retain.yaml"], finetune=True)
    tofu_data = str(shared_data / "tofu")
    evaluate_checkpoint(mini / "retain", EvalOptions(tofu_data=tofu_data, **MINI_EVAL))
    evaluate_checkpoint(mini / "full", EvalOptions(tofu_data=tofu_data, retain_model=str(mini / "retain"), **MINI_EVAL))
    runs = [stage(["mini_unlearn.yaml", f"methods/{m}.yaml"], f"run.name=tofu-mini-{m}") for m in ("ga", "npo", "simnpo")]
    # AltPO: the stage-1 model's own alternates to forget01 (scaled down: 1 per question, 8 tokens), then DPO on them
    unlearn_cfg, _ = load_config(paths(["mini_unlearn.yaml"]))
    altpo.run(unlearn_cfg, str(mini / "alternates.jsonl"), altpo.Sampling(**MINI_ALTPO))
    runs.append(stage(["mini_unlearn.yaml", "methods/altpo.yaml"], f"data.forget={mini / 'alternates.jsonl'}",
                      "run.name=tofu-mini-altpo"))
    # WHP: the reinforced model, its generic labels, stage 2 on them
    stage(["mini_unlearn.yaml", "mini_reinforce.yaml"], finetune=True)
    whp.write_targets(load_config(paths(["mini_unlearn.yaml", "methods/whp.yaml", "mini_whp.yaml"]))[0])
    runs.append(stage(["mini_unlearn.yaml", "methods/whp.yaml", "mini_whp.yaml"], "run.name=tofu-mini-whp"))
    cfg, patch = load_config(paths(["mini_unlearn.yaml", "methods/task_vector.yaml"]), [*MINI_SCALE, "run.name=tofu-mini-tv"])
    runs.append(task_vector.run(cfg, ds, patch, resume="", overwrite=True))
    for run in runs:
        result = evaluate_checkpoint(run / "checkpoints" / "step-000002",
                                     EvalOptions(tofu_data=tofu_data, retain_model=str(mini / "retain"), **MINI_EVAL))
        summary = result["suites"]["tofu"]["info"]["summary"]
        assert 0.0 <= summary["forget_quality"] <= 1.0 and 0.0 <= summary["model_utility_8"] <= 1.0
        assert result["suites"]["tofu"]["info"]["retain_model"] == str(mini / "retain" / "eval.json")
    table = tofu_mini.table(mini, runs).splitlines()
    assert table[0] == "| metric | fine-tuned | ga | npo | simnpo | altpo | whp | tv | retain model |"
    assert table[3].startswith("| model utility (harmonic mean of 8) |")  # no retain_perturbed in ../shared
    quality = table[2].split("|")[2:-1]
    assert all(cell.strip() != "-" for cell in quality[:7]) and quality[7].strip() == "-"  # retain vs itself: not run
