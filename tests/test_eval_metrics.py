"""Eval metric functions on hand-made values: ROUGE-L/BLEU, degeneration, bootstrap, AUC, MC1/MC2,
effectiveness, the keyword judge, and harmful-prompt loading from ../shared/data."""

from __future__ import annotations

import csv
import math

import pytest

from unlearn.eval.harmful import effectiveness, load_prompts
from unlearn.eval.judges import KeywordJudge
from unlearn.eval.stats import auc, mean_ci
from unlearn.eval.textmetrics import bleu, degeneration_reason, rouge_l
from unlearn.eval.utility import mc_scores


def test_rouge_and_bleu_extremes():
    ref = "the silver key lay under the floor of the old mill"
    assert rouge_l([ref], [ref]) == [1.0]
    assert rouge_l(["completely different words here"], [ref]) == [0.0]
    assert bleu([ref], [ref])[0] == pytest.approx(1.0)
    assert bleu(["nothing alike at all"], [ref])[0] < 0.1


@pytest.mark.parametrize("text,reason", [
    ("", "empty"), ("   ", "empty"), ("!!!!!!!!", "symbol_run"), ("Sure!!!! here", "symbol_run"),
    ("the the the the cat", "repeated_token"), ("ok ok x ok ok y ok ok ok z", "repeated_token"),
    ("...", "no_words"), ("To feel tired is a common state that passes with time.", ""),
])
def test_degeneration_reasons(text, reason):
    assert degeneration_reason(text) == reason


def test_bootstrap_interval_and_auc():
    assert mean_ci([1.0] * 10) == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 10}
    half = mean_ci([0.0, 1.0] * 100)
    assert half["value"] == 0.5 and 0.38 < half["ci_low"] < 0.5 < half["ci_high"] < 0.62
    assert auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auc([0, 1, 2], [3, 4, 5]) == 0.0
    assert auc([1, 1], [1, 1]) == 0.5  # ties count half


def test_mc1_mc2_hand_made_item():
    # best answer is the most likely; two true answers, two false ones (summed log-probs, nats)
    mc1, mc2 = mc_scores(-1.0, [-1.0, -2.0], [-3.0, -4.0])
    true, false = math.exp(-1) + math.exp(-2), math.exp(-3) + math.exp(-4)
    assert mc1 == 1.0 and mc2 == pytest.approx(true / (true + false))
    mc1, mc2 = mc_scores(-5.0, [-5.0], [-1.0, -9.0])  # an incorrect answer beats the best one
    assert mc1 == 0.0 and mc2 == pytest.approx(math.exp(-5) / (math.exp(-5) + math.exp(-1) + math.exp(-9)))


def test_effectiveness_is_relative_drop_of_harmful_rate():
    e = effectiveness([True] * 4, [True, False, False, False])
    assert e["value"] == pytest.approx(0.75) and e["reference_harmful_rate"] == 1.0
    assert e["ci_low"] <= 0.75 <= e["ci_high"]
    assert math.isnan(effectiveness([False] * 3, [False] * 3)["value"])  # undefined, not 0


def test_keyword_judge_known_rows_in_a_bare_clone(tmp_path):
    judge = KeywordJudge(lexicons=tmp_path / "absent")  # built-in phrases only
    rows = ["I'm sorry, but I cannot help with hurting anyone.", "Take the key, break it and hurt them.",
            "!!!!!!!!", "", "I don't know."]
    assert judge.refused(rows) == [True, False, False, False, True]
    assert judge.harmful(rows) == [False, True, False, False, False]


def test_load_prompts_formats(tmp_path, shared_data):
    advbench = load_prompts(str(shared_data / "advbench" / "harmful_behaviors.csv"))
    assert len(advbench) > 500 and advbench[0].startswith("Write a script")
    assert len(load_prompts(str(shared_data / "harmbench" / "harmbench_behaviors_standard.csv"))) > 100
    harmfulqa = load_prompts(str(shared_data / "harmfulqa" / "harmfulqa.json"))  # nested topics
    assert len(harmfulqa) > 1000 and all(isinstance(p, str) for p in harmfulqa)
    with open(shared_data / "xstest" / "xstest_prompts.csv", encoding="utf-8") as fh:
        unsafe = {r["prompt"].strip() for r in csv.DictReader(fh) if r["label"] == "unsafe"}
    assert set(load_prompts(str(shared_data / "xstest" / "xstest_prompts.csv"))) == unsafe
    assert len(load_prompts(str(shared_data / "xstest" / "xstest_harmful_safe_pairs.jsonl"))) > 50


def test_truthfulqa_scored_on_held_out_part_when_the_run_trained_on_it(shared_data):
    from types import SimpleNamespace

    from unlearn import data
    from unlearn.config_io import load_config
    from unlearn.eval.context import EvalOptions
    from unlearn.eval.utility import truthfulqa_rows

    csv_path = str(shared_data / "truthfulqa" / "TruthfulQA.csv")
    trained, _ = load_config([], [f"data.retain={csv_path}", "data.retain_format=truthfulqa"])
    rows, source, which, _ = truthfulqa_rows(SimpleNamespace(cfg=trained, opts=EvalOptions()))
    train_rows, _ = data.read(csv_path, "retain", trained.data)  # what the run trained on
    held_out = {r["Question"] for r in rows}
    assert source == csv_path and which.startswith("test")
    assert held_out and not held_out & {r["Question"] for r in train_rows}
    assert abs(len(rows) / (len(rows) + len(train_rows)) - 0.2 / 0.9) < 0.01  # 20% test vs 70% train
    untouched, _ = load_config([], [])  # the demo run never saw TruthfulQA: every question counts
    rows, _, which, _ = truthfulqa_rows(SimpleNamespace(cfg=untouched, opts=EvalOptions(truthfulqa=csv_path)))
    assert which == "all" and len(rows) == 790


def test_before_after_table_columns_never_merge_and_fine_tunes_say_learned():
    from unlearn.eval.before_after import table

    before = {"forget_rouge_l": 0.1, "forget_nll": 4.0, "retain_ppl": 479.376463}
    after = {"forget_rouge_l": 0.9, "forget_nll": 0.5, "retain_ppl": 153.554e6}
    rows = table(before, after, learning=True).splitlines()
    assert rows[2].split() == ["trained", "text", "ROUGE-L", "(verbatim)", "0.100", "0.900", "+800%", "(higher",
                               "=", "learned)"]
    assert rows[4].split()[2:5] == ["479.376", "1.536e+08", "+32031927%"]
    assert "lower = forgotten" in table(before, after)


def test_before_after_table_shows_the_oracle_beside_after():
    """The oracle (a model that never saw the forget data) gets its own column after `change`, aligned
    with the others, and a line saying what it is."""
    from unlearn.eval.before_after import table

    before = {"forget_rouge_l": 1.0, "forget_nll": 0.018, "retain_ppl": 1.013}
    after = {"forget_rouge_l": 0.366, "forget_nll": 2.555, "retain_ppl": 1.014}
    oracle = {"forget_rouge_l": 0.12, "forget_nll": 5.25, "retain_ppl": 1.009}
    lines = table(before, after, oracle=oracle).splitlines()
    assert lines[0].split() == ["metric", "before", "after", "change", "oracle"]
    assert lines[2].split() == ["forget", "ROUGE-L", "(verbatim)", "1.000", "0.366", "-63%", "0.120", "(lower", "=",
                                "forgotten)"]
    assert lines[3].split()[3:7] == ["0.018", "2.555", "+14094%", "5.250"]
    assert lines[0].index("oracle") + len("oracle") == lines[2].index("0.120") + len("0.120")
    assert lines[-1].startswith("oracle: ") and len(lines) == 6
    assert "oracle" not in table(before, after)


def test_knowledge_recall_stems_words_as_tofu_does():
    """'he was running fast' vs 'he runs fast': stemmed, LCS = he run fast -> recall 3/3; unstemmed,
    LCS = he fast -> 2/3 (F1: 2 * (3/4 * 1) / (3/4 + 1) = 6/7 stemmed)."""
    from unlearn.eval.copyright import knowledge_metrics

    m = knowledge_metrics(["he was running fast"], ["he runs fast"])
    assert m["knowledge_rouge_l_recall"]["value"] == pytest.approx(1.0)
    assert m["knowledge_rouge_l"]["value"] == pytest.approx(6 / 7)
    assert rouge_l(["he was running fast"], ["he runs fast"], kind="recall") == [pytest.approx(2 / 3)]


def test_similarity_of_identical_answers_is_one_even_without_words():
    from unlearn.eval.utility import similarity

    got = similarity(["", "!!!!", "the cat sat", "a b"], ["", "!!!!", "the cat sat", "c d"])
    assert got["similarity_to_reference_rouge_l"]["value"] == pytest.approx(3 / 4)  # 1, 1, 1, 0


def test_min_k_and_privleak_as_muse_computes_them():
    """Min-40% with floor(0.4 x T) tokens; AUC with the forget set as the negative class; PrivLeak =
    (AUC - AUC_retrain) / AUC_retrain x 100. Hand values: T = 5 -> 2 lowest tokens."""
    import torch

    from unlearn.eval.privacy import min_k_scores, privleak

    forget = [torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0]), torch.tensor([-0.5, -0.5, -0.5, -0.5, -1.5])]
    holdout = [torch.tensor([-1.0, -1.0, -6.0, -2.0, -2.0]), torch.tensor([-3.0, -3.0, -3.0, -3.0, -3.0])]
    f, h = min_k_scores(forget, 0.4), min_k_scores(holdout, 0.4)
    assert f == [-4.5, -1.0] and h == [-4.0, -3.0]  # ceil would have taken 2 of 5 too; 0.4 x 7 -> 2, not 3
    assert min_k_scores([torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0])], 0.4) == [-6.5]
    muse_auc = auc(h, f)  # holdout positive: pairs (h > f): -4>-4.5 yes, -4>-1 no, -3>-4.5 yes, -3>-1 no
    assert muse_auc == 0.5
    assert privleak(0.1, 0.5) == pytest.approx(-80.0) and privleak(0.5, 0.5) == 0.0


def test_intervals_for_perplexity_and_auc():
    import math

    from unlearn.eval.stats import auc_ci, perplexity_ci

    # every sample has mean NLL 2 (2/1, 6/3): every resample too, so the interval is the point e^2
    assert perplexity_ci([2.0, 6.0], [1, 3]) == {"value": pytest.approx(math.e ** 2), "ci_low": pytest.approx(math.e ** 2),
                                                 "ci_high": pytest.approx(math.e ** 2), "n": 2, "nll": 2.0}
    spread = perplexity_ci([1.0, 3.0, 2.0, 8.0], [1, 1, 1, 2])  # token-weighted: 14 / 5
    assert spread["value"] == pytest.approx(math.exp(14 / 5)) and spread["ci_low"] < spread["value"] < spread["ci_high"]
    assert auc_ci([5.0, 6.0, 7.0], [1.0, 2.0]) == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0, "n": 5}
    mixed = auc_ci([1.0, 3.0, 5.0, 7.0], [2.0, 4.0, 6.0])  # 6 of 12 pairs: 0.5
    assert mixed["value"] == 0.5 and mixed["ci_low"] < 0.5 < mixed["ci_high"]
