"""The eval job end to end: eval.json, TensorBoard scalars at the checkpoint's step, idempotence,
--force, merging suites, --run summary, and refusal of an incomplete checkpoint."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from unlearn import demo
from unlearn.config_io import dump_yaml, load_config
from unlearn.errors import UserError
from unlearn.eval.context import EvalOptions
from unlearn.eval.job import evaluate_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(limit=4, max_new_tokens=8, prefix_tokens=8, continuation_tokens=8, truthfulqa="none", batch_size=4)


def make_checkpoint(run_dir: Path, step: int, demo_dir: Path, complete: bool = True,
                    forget: str = "forget.txt") -> Path:
    """A checkpoint folder as unlearn.train.checkpoint writes it: HF weights, config.yaml, meta.json, COMPLETE."""
    ckpt = run_dir / "checkpoints" / f"step-{step:06d}"
    shutil.copytree(demo_dir / "init", ckpt)
    cfg, _ = load_config([], [f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / forget}",
                              f"data.retain={demo_dir / 'normal.jsonl'}", "data.max_length=48"])
    (ckpt / "config.yaml").write_text(dump_yaml(cfg))
    (ckpt / "meta.json").write_text(json.dumps({"step": step}))
    if complete:
        (ckpt / "COMPLETE").write_text(f"{step}\n")
    return ckpt


def tb_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_all_suites_write_eval_json_and_tensorboard(tmp_path, demo_dir):
    run = tmp_path / "run"
    ckpt = make_checkpoint(run, 5, demo_dir)
    holdout = tmp_path / "holdout.txt"
    holdout.write_text(demo.retain_text(seed=3))
    # the checkpoint as its own reference: similarity must be exactly 1 and PrivLeak exactly 0
    opts = EvalOptions(suites=("harmful", "copyright", "utility", "privacy"), reference=str(ckpt),
                       harmful_prompts=str(demo_dir / "harmful.jsonl"), holdout=str(holdout),
                       privacy_unit="block", **FAST)  # forget.txt and holdout.txt are one document each
    result = evaluate_checkpoint(ckpt, opts)
    saved = json.loads((ckpt / "eval.json").read_text())
    assert saved["step"] == 5 and set(saved["suites"]) == {"harmful", "copyright", "utility", "privacy"}
    assert saved["scalars"] == result["scalars"]
    assert saved["decoding"]["strategy"] == "greedy" and saved["decoding"]["max_new_tokens"] == 8
    assert saved["suites"]["harmful"]["info"]["judge"]["kind"] == "keyword"
    metrics = {k: v for s in saved["suites"].values() for k, v in s["metrics"].items()}
    assert metrics["similarity_to_reference_rouge_l"]["value"] == pytest.approx(1.0)
    assert "privleak" not in metrics  # no retrained model given: the suite says so instead
    assert "retrained" in saved["suites"]["privacy"]["info"]["privleak"]
    assert metrics["harmful_rate"]["n"] == 4 and 0 <= metrics["harmful_rate"]["ci_low"] <= metrics["harmful_rate"]["value"]
    assert "forget_harmful_rate" not in metrics  # forget set is text: no trained-on harmful prompts
    assert {"ci_low", "ci_high", "n"} <= set(metrics["verbatim_rouge_l"])
    scalars = tb_scalars(run / "tb")
    assert scalars["eval/copyright/verbatim_rouge_l"] == [(5, pytest.approx(saved["scalars"]["eval/copyright/verbatim_rouge_l"]))]
    assert "eval/utility/retain_ppl" in scalars and "eval/privacy/min_k_auc" in scalars
    assert list((run / "eval_cache").glob("reference-*.json"))  # reference results cached for the run


def test_skip_force_and_merge(tmp_path, demo_dir):
    ckpt = make_checkpoint(tmp_path / "run", 3, demo_dir)
    evaluate_checkpoint(ckpt, EvalOptions(suites=("copyright",), reference="none", **FAST))
    first = (ckpt / "eval.json").stat().st_mtime_ns
    again = evaluate_checkpoint(ckpt, EvalOptions(suites=("copyright",), reference="none", **FAST))
    assert (ckpt / "eval.json").stat().st_mtime_ns == first and set(again["suites"]) == {"copyright"}
    merged = evaluate_checkpoint(ckpt, EvalOptions(suites=("copyright", "utility"), reference="none", **FAST))
    assert set(merged["suites"]) == {"copyright", "utility"}
    assert merged["options"]["suites"] == ["utility"]  # only the missing suite ran
    forced = evaluate_checkpoint(ckpt, EvalOptions(suites=("copyright",), reference="none", force=True, **FAST))
    assert forced["options"]["suites"] == ["copyright"] and set(forced["suites"]) == {"copyright", "utility"}
    assert (ckpt / "eval.json").stat().st_mtime_ns != first


def test_incomplete_checkpoint_and_bad_suite_are_user_errors(tmp_path, demo_dir):
    ckpt = make_checkpoint(tmp_path / "run", 1, demo_dir, complete=False)
    with pytest.raises(UserError, match="COMPLETE"):
        evaluate_checkpoint(ckpt, EvalOptions(**FAST))
    from unlearn.eval.job import parse_suites

    with pytest.raises(UserError, match="unknown"):
        parse_suites("copyright,memory")


def _launcher():
    spec = importlib.util.spec_from_file_location("launch_evaluate", ROOT / "launch" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_evaluates_every_complete_checkpoint_then_summarises(tmp_path, demo_dir, capsys):
    run = tmp_path / "run"
    for step in (2, 4):
        make_checkpoint(run, step, demo_dir)
    make_checkpoint(run, 6, demo_dir, complete=False)  # a crashed save: not evaluated
    args = ["--run", str(run), "--suite", "copyright", "--reference", "none",
            *[f"--{k}={v}" for k, v in FAST.items()]]
    _launcher().main(args)
    assert (run / "checkpoints" / "step-000002" / "eval.json").is_file()
    assert not (run / "checkpoints" / "step-000006" / "eval.json").exists()
    lines = (run / "eval_summary.csv").read_text().splitlines()
    assert lines[0].startswith("step,checkpoint,eval/copyright/verbatim_bleu")
    # step 0 = the model the run started from (model.name_or_path: here the same weights as the checkpoints)
    assert [row.split(",")[0] for row in lines[1:]] == ["0", "2", "4"]
    assert lines[1].split(",")[1] == str(demo_dir / "init") and lines[1].split(",")[2:] == lines[2].split(",")[2:]
    assert json.loads((run / "eval_start.json").read_text())["step"] == 0
    assert (run / "eval_summary.png").stat().st_size > 1000
    assert "verbatim R-L" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_refuses_incomplete_checkpoint_with_one_line(tmp_path, demo_dir):
    ckpt = make_checkpoint(tmp_path / "run", 1, demo_dir, complete=False)
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "evaluate.py"), str(ckpt)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:") and "COMPLETE" in proc.stderr


def test_model_answering_bangs_is_caught_by_utility(tmp_path, demo_dir):
    """The paper's failure: every normal prompt answered with "!!!!". Perplexity alone hides it;
    the degeneration rate must read 1 and the similarity to the original model must collapse."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unlearn import data

    tok = AutoTokenizer.from_pretrained(demo_dir / "init")
    model = AutoModelForCausalLM.from_pretrained(demo_dir / "init")
    rows = [json.loads(line) for line in (demo_dir / "normal.jsonl").read_text().splitlines()][:16]
    template = "### Question: {prompt}\n ### Answer: {response}"
    batch = data.collate([data.qa_sample(r["question"], "!!!!!!!!!!!!", tok, template, 64) for r in rows],
                         tok.pad_token_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()
        opt.step()
        opt.zero_grad()
    ckpt = make_checkpoint(tmp_path / "run", 7, demo_dir)
    model.save_pretrained(ckpt)
    result = evaluate_checkpoint(ckpt, EvalOptions(suites=("utility",), reference=str(demo_dir / "init"), **FAST))
    utility = result["suites"]["utility"]
    assert utility["metrics"]["degeneration_rate"]["value"] == 1.0
    assert utility["info"]["degeneration_reasons"] == {"symbol_run": 4}
    assert utility["metrics"]["similarity_to_reference_rouge_l"]["value"] < 0.2
    assert utility["examples"][0]["generation"].strip().startswith("!!!!")


def test_pku_forget_run_gets_the_harmful_suite_by_default(tmp_path, demo_dir):
    from unlearn.eval.job import default_suites, run_config

    ckpt = make_checkpoint(tmp_path / "run", 9, demo_dir, forget="harmful.jsonl")
    opts = EvalOptions(reference="none", harmful_prompts=str(demo_dir / "harmful.jsonl"), **FAST)
    assert default_suites(run_config(ckpt), EvalOptions()) == ("harmful", "copyright", "utility")
    harmful = evaluate_checkpoint(ckpt, replace(opts, suites=("harmful",)))["suites"]["harmful"]
    assert harmful["metrics"]["forget_harmful_rate"]["n"] == 4 and harmful["metrics"]["harmful_rate"]["n"] == 4
    assert "effectiveness" not in harmful["metrics"]  # no reference model: E is not made up
    assert harmful["info"]["forget_prompts"].endswith("harmful.jsonl")


def test_forget_and_retain_flags_choose_the_texts(tmp_path, demo_dir):
    """evaluate.py --forget/--retain replace the run's data for every suite (a stage-1 model's baseline)."""
    ckpt = make_checkpoint(tmp_path / "run", 1, demo_dir)  # its config: forget.txt, normal.jsonl
    other = tmp_path / "other.txt"
    other.write_text((demo_dir / "retain.txt").read_text())
    opts = EvalOptions(suites=("copyright", "utility"), forget=str(other), retain=str(demo_dir / "forget.txt"),
                       **FAST)
    result = evaluate_checkpoint(ckpt, opts)
    assert result["suites"]["copyright"]["info"]["forget"] == str(other)
    own = evaluate_checkpoint(make_checkpoint(tmp_path / "own", 1, demo_dir),
                              EvalOptions(suites=("copyright", "utility"), **FAST))
    assert own["suites"]["copyright"]["info"]["forget"] == str(demo_dir / "forget.txt")
    ppl = [r["suites"]["utility"]["metrics"]["retain_ppl"]["value"] for r in (result, own)]
    assert ppl[0] != ppl[1]  # forget.txt as retain text vs normal.jsonl answers


def _documents(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return str(path)


def _privacy_documents(tmp_path: Path) -> tuple[str, str]:
    """4 forget documents (the demo book's first passages) and 4 held-out ones, the last of them longer
    than the tiny model's 256 positions."""
    book, other = demo.forget_text().split("\n\n"), demo.retain_text(seed=3).split("\n\n")
    return (_documents(tmp_path / "forget_docs.jsonl", book[:4]),
            _documents(tmp_path / "holdout_docs.jsonl", other[:3] + [" ".join(other[3:12])]))


@torch.no_grad()
def _min40_by_hand(model, tok, text: str) -> float:
    """MUSE's Min-40% of one document: tokenizer.encode(text) (special tokens on), here cut to the model's
    window, scored alone; the mean of the floor(0.4 x T) lowest log-probs of the T tokens after the first."""
    ids = tok(text)["input_ids"][:model.config.max_position_embeddings]
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    picked = sorted(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)))
    lowest = picked[:int(0.4 * len(picked))]
    return sum(lowest) / len(lowest)


def test_privacy_scores_each_document_whole_as_muse(tmp_path, demo_dir):
    """min_k_auc over documents (MUSE's privleak unit): the share of (held-out, forget) pairs whose held-out
    document has the higher Min-40%, ties half, from log-probs computed here one document at a time."""
    from unlearn.model import load_for_eval

    ckpt = make_checkpoint(tmp_path / "run", 1, demo_dir)
    forget, holdout = _privacy_documents(tmp_path)
    model, tok = load_for_eval(str(ckpt))
    f = [_min40_by_hand(model, tok, json.loads(line)["text"]) for line in open(forget)]
    h = [_min40_by_hand(model, tok, json.loads(line)["text"]) for line in open(holdout)]
    want = sum((b > a) + 0.5 * (b == a) for a in f for b in h) / 16
    assert 0 < want < 1
    opts = EvalOptions(suites=("privacy",), forget=forget, holdout=holdout, reference_auc=0.5, **FAST)
    suite = evaluate_checkpoint(ckpt, opts)["suites"]["privacy"]
    assert suite["metrics"]["min_k_auc"]["value"] == pytest.approx(want, abs=1e-12)
    assert suite["metrics"]["privleak"]["value"] == pytest.approx((want - 0.5) / 0.5 * 100, abs=1e-9)
    assert (suite["info"]["n_forget"], suite["info"]["n_holdout"]) == (4, 4)
    assert suite["info"]["unit"]["forget"] == suite["info"]["unit"]["holdout"] == "document"
    assert suite["info"]["documents_cut"] == {"forget": 0, "holdout": 1, "window": 256}
    # --privacy_unit block: the run's 48-token blocks of the concatenated documents, more samples per side
    block = evaluate_checkpoint(ckpt, replace(opts, privacy_unit="block", limit=0, force=True))["suites"]["privacy"]
    assert block["info"]["unit"]["forget"] == "block" and block["info"]["n_forget"] > 4
    # one .txt is one document: refused in document mode, with the way out named
    txt = tmp_path / "holdout.txt"
    txt.write_text(demo.retain_text(seed=3))
    with pytest.raises(UserError, match="holds 1 document.*--privacy_unit block"):
        evaluate_checkpoint(ckpt, replace(opts, holdout=str(txt), force=True))


def test_privleak_against_a_retrained_model(tmp_path, demo_dir):
    """--retrained MODEL: PrivLeak = (AUC - AUC_retrain) / AUC_retrain x 100; the model as its own
    retrained stand-in gives exactly 0, a --reference_auc of half its AUC gives +100."""
    ckpt = make_checkpoint(tmp_path / "run", 1, demo_dir)
    forget, holdout = _privacy_documents(tmp_path)
    opts = EvalOptions(suites=("privacy",), forget=forget, holdout=holdout, retrained=str(ckpt), **FAST)
    metrics = evaluate_checkpoint(ckpt, opts)["suites"]["privacy"]["metrics"]
    assert metrics["privleak"]["value"] == pytest.approx(0.0)
    value = metrics["min_k_auc"]["value"]
    given = EvalOptions(suites=("privacy",), forget=forget, holdout=holdout, reference_auc=value / 2, force=True,
                        **FAST)
    again = evaluate_checkpoint(ckpt, given)["suites"]["privacy"]
    assert again["metrics"]["privleak"]["value"] == pytest.approx(100.0)
    assert again["info"]["retrain_auc_from"] == "--reference_auc"
    zero = replace(given, reference_auc=0.0)
    none = evaluate_checkpoint(ckpt, zero)["suites"]["privacy"]
    assert "privleak" not in none["metrics"] and "AUC is 0" in none["info"]["privleak"]


def test_every_suites_inputs_are_checked_before_the_first_suite_runs(tmp_path, demo_dir, capsys):
    """`--suite harmful,copyright,utility,privacy` ran the first three (30 minutes on a real model) and then
    failed for want of --holdout, writing nothing: now the missing inputs of every suite are one line,
    exit 2, before any model is loaded, and each names what it expected."""
    ckpt = make_checkpoint(tmp_path / "run", 3, demo_dir)
    fast = [f"--{k}={v}" for k, v in FAST.items()]
    with pytest.raises(SystemExit) as exit_info:
        _launcher().main([str(ckpt), "--suite", "harmful,copyright,utility,privacy", "--reference", "none",
                          "--harmful_prompts", str(demo_dir / "harmful.jsonl"), *fast])
    out = capsys.readouterr()
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(errors) == 1, out.err
    assert errors[0] == ("error: privacy suite needs held-out text the run never trained on; expected --holdout FILE")
    assert " suite ..." not in out.out and not (ckpt / "eval.json").exists()  # no suite ran
    # several suites short of inputs: all of them in the one line (here also a judge that does not exist)
    with pytest.raises(SystemExit):
        _launcher().main([str(ckpt), "--suite", "harmful,mc,tofu", "--judge", str(tmp_path / "no-judge"),
                          "--tofu_data", str(tmp_path), "--reference", "none", *fast])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: 3 suites cannot run (nothing was evaluated): harmful suite: ")
    assert "expected --mc" in err[0] and "TOFU split 'forget10_perturbed' not found" in err[0]
    from unlearn.eval.job import check_args  # a sweep plans its eval jobs: flags a suite needs, checked there

    with pytest.raises(UserError, match="expected --holdout FILE"):
        check_args(["--suite", "copyright,privacy"])


def test_a_suite_that_finished_is_kept_when_a_later_one_fails(tmp_path, demo_dir, monkeypatch, capsys):
    """A fault after the checks (the held-out file removed while copyright runs): eval.json keeps copyright,
    marked incomplete with privacy named, so sweeps and --best do not count it; the same command then runs
    privacy alone and completes it."""
    from unlearn import runs
    from unlearn.eval import copyright
    from unlearn.sweep.select import candidates

    run = tmp_path / "run"
    ckpt = make_checkpoint(run, 4, demo_dir)
    holdout = tmp_path / "holdout.txt"
    holdout.write_text(demo.retain_text(seed=3))
    opts = EvalOptions(suites=("copyright", "privacy"), holdout=str(holdout), privacy_unit="block",
                       reference="none", **FAST)
    kept = holdout.read_text()
    measure = copyright.run

    def copyright_then_holdout_gone(ctx):
        result = measure(ctx)
        holdout.unlink()
        return result

    monkeypatch.setattr(copyright, "run", copyright_then_holdout_gone)
    with pytest.raises(UserError, match="holdout.txt' not found"):
        evaluate_checkpoint(ckpt, opts)
    saved = json.loads((ckpt / "eval.json").read_text())
    assert set(saved["suites"]) == {"copyright"} and saved["scalars"]["eval/copyright/verbatim_rouge_l"] >= 0
    assert saved["incomplete"]["failed_suite"] == "privacy" and saved["incomplete"]["not_run"] == ["privacy"]
    assert "not found" in saved["incomplete"]["error"] and (ckpt / runs.EVAL_ERROR).is_file()
    assert "the same command runs only privacy" in capsys.readouterr().out
    assert not runs.evaluated(ckpt) and candidates(run) == []  # --best, status, halving: not evaluated
    monkeypatch.setattr(copyright, "run", measure)
    holdout.write_text(kept)
    done = evaluate_checkpoint(ckpt, opts)
    assert "copyright suite ..." not in capsys.readouterr().out  # only what was missing ran
    assert set(done["suites"]) == {"copyright", "privacy"} and "incomplete" not in done
    assert done["suites"]["copyright"] == saved["suites"]["copyright"] and done["options"]["suites"] == ["privacy"]
    assert runs.evaluated(ckpt) and not (ckpt / runs.EVAL_ERROR).exists() and len(candidates(run)) == 1
    assert [s for s, _ in tb_scalars(run / "tb")["eval/copyright/verbatim_rouge_l"]] == [4]  # logged once
