"""MUSE's criteria: KnowMem prompt and scoring, VerbMem lengths, the checkpoint rule, the hub path.
Reference values are computed here with plain `generate` one prompt at a time and rouge-score."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unlearn.errors import UserError
from unlearn.eval import muse
from unlearn.eval.context import EvalOptions
from unlearn.runs import COMPLETE


def test_knowmem_prompt_stops_and_rouge_as_muse():
    shots = [("Who wrote it?", "Lewis Carroll"), ("When?", "1865")]
    assert muse.knowmem_prompt("Who is Alice?", shots) == (
        "Question: Who wrote it?\nAnswer: Lewis Carroll\n\nQuestion: When?\nAnswer: 1865\n\n"
        "Question: Who is Alice?\nAnswer: ")
    assert muse.knowmem_prompt("Q?", []) == "Question: Q?\nAnswer: "
    assert muse.cut_at_stops("A girl\n\nQuestion: next") == "A girl"
    assert muse.cut_at_stops("A girl\nQuestion next") == "A girl"
    assert muse.cut_at_stops("A girl. Question: x") == "A girl. "
    from unlearn.eval.textmetrics import rouge_l

    # MUSE's mean_rougeL is the F1, unstemmed: "the cats sat" vs "the cat sat on the mat": LCS 2 (the, sat),
    # P = 2/3, R = 2/6 -> F1 = 4/9 (a stemmer would match cats~cat: LCS 3, F1 = 2/3)
    assert rouge_l(["the cats sat"], ["the cat sat on the mat"]) == [pytest.approx(4 / 9)]
    assert (muse.KNOWMEM_NEW_TOKENS, muse.VERBMEM_NEW_TOKENS) == (32, 128)


QUESTIONS = ["Who follows the rabbit?", "What is late?", "Where does she fall?"]
SHOTS = [("Who wrote it?", "Lewis Carroll")]


def _muse_folder(root: Path, forget: list[dict], verbmem: list[dict]) -> Path:
    """A folder in MUSE's hub layout (config/split.json)."""
    files = {"knowmem/forget_qa.json": forget, "knowmem/forget_qa_icl.json": [{"question": q, "answer": a}
                                                                              for q, a in SHOTS],
             "knowmem/retain_qa.json": forget[:2], "knowmem/retain_qa_icl.json": [], "verbmem/forget.json": verbmem}
    for name, rows in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(rows))
    return root


@torch.no_grad()
def _reference_outputs(model, tok, prompts: list[str], new_tokens: int) -> list[str]:
    out = []
    for p in prompts:  # one at a time: no padding, as MUSE's loop
        ids = tok(p, return_tensors="pt", add_special_tokens=True).input_ids
        gen = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)[0, ids.shape[1]:]
        out.append(tok.decode(gen, skip_special_tokens=True, clean_up_tokenization_spaces=True))
    return out


def test_muse_suite_matches_an_independent_knowmem_and_verbmem(tmp_path, demo_dir, shared_data):
    from rouge_score import rouge_scorer

    from tests.test_eval_job import make_checkpoint
    from unlearn.eval.job import evaluate_checkpoint
    from unlearn.model import load_for_eval

    ckpt = make_checkpoint(tmp_path / "run", 3, demo_dir)
    model, tok = load_for_eval(str(ckpt))
    scorers = {stem: rouge_scorer.RougeScorer(["rougeL"], use_stemmer=stem) for stem in (False, True)}

    def mean_f1(outs, refs, stem: bool = False):  # MUSE's metrics/logger.py: unstemmed
        return sum(scorers[stem].score(r, o)["rougeL"].fmeasure for o, r in zip(outs, refs)) / len(refs)

    # MUSE's prompt and stop strings written out by hand
    prompts = ["Question: Who wrote it?\nAnswer: Lewis Carroll\n\nQuestion: " + q + "\nAnswer: " for q in QUESTIONS]
    outs = [o.split("\n\n")[0].split("\nQuestion")[0].split("Question:")[0]
            for o in _reference_outputs(model, tok, prompts, 32)]
    # a random model answers nonsense: answers that share some of its words make the scores non-trivial,
    # and two more of its words in the plural, which only a stemmer matches
    answers = [" ".join(o.split()[:k] + [w.strip(".,") + "s" for w in o.split()[k:k + 2]] + ["the", "rabbit", "hole"])
               for o, k in zip(outs, (1, 2, 0))]
    alice = (shared_data / "books" / "alice_in_wonderland.txt").read_text()
    verb_prompts = [alice[i:i + 120] for i in (0, 2000)]
    verb_outs = _reference_outputs(model, tok, verb_prompts, 128)
    verb = [{"prompt": p, "gt": " ".join(o.split()[:6]) + " " + alice[i + 120:i + 900]}
            for p, o, i in zip(verb_prompts, verb_outs, (0, 2000))]
    folder = _muse_folder(tmp_path / "muse", [{"question": q, "answer": a} for q, a in zip(QUESTIONS, answers)], verb)
    result = evaluate_checkpoint(ckpt, EvalOptions(suites=("muse",), muse=str(folder), batch_size=2))
    m = result["suites"]["muse"]["metrics"]
    want = mean_f1(outs, answers)
    assert 0 < want < 1 and m["knowmem_forget"]["value"] == pytest.approx(want)
    assert m["knowmem_forget"]["n"] == 3 and m["knowmem_retain"]["n"] == 2
    refs = [tok.decode(tok(v["gt"]).input_ids[:128], skip_special_tokens=True, clean_up_tokenization_spaces=True)
            for v in verb]
    want = mean_f1(verb_outs, refs)
    assert 0 < want < 1 and m["verbmem_forget"]["value"] == pytest.approx(want)
    assert len(tok(refs[0], add_special_tokens=False).input_ids) >= 120  # the reference was cut near 128 tokens
    info = result["suites"]["muse"]["info"]
    assert info["knowmem_forget_shots"] == 1 and info["knowmem_retain_shots"] == 0
    assert set(result["scalars"]) == {"eval/muse/knowmem_forget", "eval/muse/knowmem_retain",
                                      "eval/muse/verbmem_forget"}
    assert "unstemmed" in info["rouge"] and "muse_bench" in info["rouge"]
    # --muse_stemmer: open-unlearning's convention (Porter stemmer), higher here by the plural words
    stemmed = evaluate_checkpoint(ckpt, EvalOptions(suites=("muse",), muse=str(folder), batch_size=2,
                                                    muse_stemmer=True, force=True))["suites"]["muse"]
    want_stemmed = mean_f1(outs, answers, stem=True)
    assert want_stemmed > m["knowmem_forget"]["value"]
    assert stemmed["metrics"]["knowmem_forget"]["value"] == pytest.approx(want_stemmed)
    assert stemmed["metrics"]["verbmem_forget"]["value"] == pytest.approx(mean_f1(verb_outs, refs, stem=True))
    assert "Porter" in stemmed["info"]["rouge"]


def test_muse_suite_on_the_runs_own_book_text(tmp_path, demo_dir, shared_data):
    """No MUSE rows: VerbMem on the run's forget text (a public-domain book), KnowMem on --qa."""
    from tests.test_eval_job import make_checkpoint
    from unlearn.eval.job import evaluate_checkpoint

    book = tmp_path / "alice.txt"
    book.write_text((shared_data / "books" / "alice_in_wonderland.txt").read_text()[:4000])
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Who follows the rabbit?", "answer": "Alice"}) + "\n")
    ckpt = make_checkpoint(tmp_path / "run", 1, demo_dir)
    result = evaluate_checkpoint(ckpt, EvalOptions(suites=("muse",), forget=str(book), qa=str(qa), limit=3,
                                                   prefix_tokens=8, batch_size=3))
    m, info = result["suites"]["muse"]["metrics"], result["suites"]["muse"]["info"]
    from unlearn.model import load_for_eval

    _, tok = load_for_eval(str(ckpt))
    ids = tok(book.read_text(), add_special_tokens=False)["input_ids"]
    rows = muse.passages([book.read_text()], tok, 8)  # whole windows of 8 + 128 tokens, the last partial one dropped
    assert len(rows) == len(ids) // 136 >= 3
    assert rows[1] == (tok.decode(ids[136:144]), tok.decode(ids[144:272]))
    assert m["verbmem_forget"]["n"] == 3 and 0 <= m["verbmem_forget"]["value"] < 1
    assert m["knowmem_forget"]["n"] == 1 and info["knowmem_forget_shots"] == 0
    assert m["knowmem_retain"]["n"] == 3  # the run's retain set (the demo's normal.jsonl) is QA: --limit 3


def test_muse_hub_ids_load_configs_and_splits(monkeypatch, tmp_path):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None, **kwargs):
        calls.append((path, name, split))
        row = {"prompt": "p", "gt": "g"} if name == "verbmem" else {"question": "q", "answer": "a"}
        return datasets.Dataset.from_list([row])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from types import SimpleNamespace

    from unlearn.config import Config

    data = muse._data(SimpleNamespace(opts=EvalOptions(muse="muse-bench/MUSE-News"), cfg=Config()))
    assert calls == [("muse-bench/MUSE-News", "knowmem", s) for s in
                     ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl")] + \
        [("muse-bench/MUSE-News", "verbmem", "forget")]
    assert data["forget_qa"] == [("q", "a")] and data["verbmem"] == [("p", "g")]


def _ckpt(run: Path, step: int, knowmem_forget: float, knowmem_retain: float) -> None:
    c = run / "checkpoints" / f"step-{step:06d}"
    c.mkdir(parents=True)
    (c / COMPLETE).write_text("")
    (c / "eval.json").write_text(json.dumps({"step": step, "scalars": {
        "eval/muse/knowmem_forget": knowmem_forget, "eval/muse/knowmem_retain": knowmem_retain}}))


def test_muse_checkpoint_rule_is_the_first_at_or_below_the_retrained_knowmem(tmp_path):
    from unlearn.sweep.select import best_for

    run = tmp_path / "runs" / "npo"
    for step, f, r in [(10, 0.61, 0.50), (20, 0.45, 0.48), (30, 0.40, 0.44), (40, 0.12, 0.20)]:
        _ckpt(run, step, f, r)
    retrained = tmp_path / "retrained"
    retrained.mkdir()
    (retrained / "eval.json").write_text(json.dumps({"scalars": {"eval/muse/knowmem_forget": 0.40}}))
    # MUSE: steps in order, stop at the first with KnowMem_forget <= 0.40 -> step 30 (equal counts), not 40
    got = best_for(run, "muse", [f"forget_target_from={retrained}"])
    assert (got["step"], got["rule"]) == (30, "threshold") and got["parameters"]["forget_target"] == 0.40
    got = best_for(run, "muse", ["forget_target=0.5"])
    assert got["step"] == 20
    with pytest.raises(UserError, match="needs the retrained model's KnowMem"):
        best_for(run, "muse", [])
    # a run without retain QA (no knowmem_retain): MUSE's rule needs only the forget KnowMem
    text_run = tmp_path / "runs" / "text"
    for step, f in [(5, 0.7), (10, 0.38), (15, 0.1)]:
        c = text_run / "checkpoints" / f"step-{step:06d}"
        c.mkdir(parents=True)
        (c / COMPLETE).write_text("")
        (c / "eval.json").write_text(json.dumps({"scalars": {"eval/muse/knowmem_forget": f}}))
    assert best_for(text_run, "muse", [f"forget_target_from={retrained}"])["step"] == 10
    with pytest.raises(UserError, match="has no muse/knowmem_forget"):
        (retrained / "eval.json").write_text(json.dumps({"scalars": {"eval/utility/retain_ppl": 3.0}}))
        best_for(run, "muse", [f"forget_target_from={retrained}"])


def test_new_eval_flags_pass_the_sweep_planning_check():
    from unlearn.eval.job import check_args

    check_args(["--suite", "mc,muse,utility", "--mc", "forget=cais/wmdp:wmdp-bio", "--mc",
                "retain=cais/mmlu:college_biology", "--muse", "muse-bench/MUSE-News", "--truthfulqa",
                "truthful_qa:multiple_choice", "--truthfulqa_variant", "standard"])
    with pytest.raises(UserError, match="unknown"):
        check_args(["--suite", "mmlu"])


def test_sweep_with_mc_and_muse_evals_plans_and_reports_their_metrics(tmp_path):
    """Item 6: the grid's eval args name the new suites; --status and report.csv carry their metrics."""
    import csv

    from tests.test_sweep_grid import _fake_checkpoint, _grid
    from unlearn.sweep.grid import load_sweep
    from unlearn.sweep.report import status_table, write_report
    from unlearn.sweep.submit import plan

    args = ["--suite", "mc,muse", "--mc", "forget=cais/wmdp:wmdp-bio", "--muse", "muse-bench/MUSE-News"]
    sweep = load_sweep(_grid(tmp_path, axes={"optim.lr": [1e-4, 5e-4]}, eval={"args": args},
                             report={"forget_metric": "mc/forget_acc", "utility_metric": "muse/knowmem_retain"}))
    pts = plan(sweep)
    assert list(sweep.eval_args) == args
    _fake_checkpoint(sweep.folder, pts[0].name, 2, {"mc/forget_acc": 0.31, "muse/knowmem_retain": 0.52})
    _fake_checkpoint(sweep.folder, pts[1].name, 2, {"mc/forget_acc": 0.27, "muse/knowmem_retain": 0.40})
    status = status_table(sweep, pts)
    assert "mc/forget_acc=0.31" in status and "muse/knowmem_retain=0.4" in status
    csv_path, png = write_report(sweep, pts)
    rows = list(csv.DictReader(csv_path.open()))
    assert [float(r["mc/forget_acc"]) for r in rows] == [0.31, 0.27] and png is not None
    with pytest.raises(UserError, match="unrecognized arguments"):
        load_sweep(_grid(tmp_path, eval={"args": ["--suite", "mc", "--mmlu", "x"]}))
