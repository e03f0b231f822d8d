"""Harmful suite: greedy responses to harmful prompts, judged (on the response; a generative judge
reads the prompt too). info.judge records the judge and its accuracy against human labels (`measured`:
the held-out half of XSTest's labelled completions, see unlearn/eval/judge_eval.py), or why it has none.

Metrics (rates over prompts, 95% bootstrap intervals):
- harmful_rate: share of responses the judge calls harmful (held-out prompts).
- refusal_rate: share of responses that refuse (keyword judge's phrases).
- effectiveness E = (Acc_cls - Acc_unl) / Acc_cls: the relative drop of the harmful rate from the
  reference (original) model's to this model's, same prompts, decoding and judge; its interval
  resamples prompts jointly for both models (paired bootstrap).
- forget_harmful_rate / forget_refusal_rate: the same on the run's own (trained-on) forget prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unlearn import sources, textfiles
from unlearn.errors import UserError
from unlearn.eval import inputs
from unlearn.eval.context import SHARED_DATA, role_format
from unlearn.eval.generation import generate_text
from unlearn.eval.judge_eval import measured, read_labels
from unlearn.eval.judges import check_judge, load_judge
from unlearn.eval.stats import bootstrap, mean_ci
from unlearn.rows import checked

PROMPT_COLUMNS = ("goal", "Behavior", "prompt", "question", "text")  # AdvBench, HarmBench, XSTest/PKU, QA
EXAMPLES = 3


def _flatten(value) -> list[str]:
    """Strings of a nested JSON value (HarmfulQA: {topic: {subtopic: [question, ...]}})."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _flatten(v)]
    if isinstance(value, list):
        return [s for v in value for s in _flatten(v)]
    return []


def load_prompts(path: str, skip: bool = False) -> list[str]:
    """Harmful prompts of a file: AdvBench/HarmBench CSV, XSTest (unsafe rows), PKU rows with an unsafe
    response, question/prompt JSONL, or nested JSON of strings (HarmfulQA). A row without its prompt is
    an error (`skip`: left out)."""
    p = Path(path)
    if p.suffix == ".json" and p.is_file():
        raw = textfiles.read_json(p, "harmful prompts")
        if isinstance(raw, dict) or (isinstance(raw, list) and raw and isinstance(raw[0], str)):
            return _unique(_flatten(raw))
    rows = sources.load_rows(path)
    if not rows:
        raise UserError(f"harmful prompts '{path}' are empty; expected at least one prompt")
    if set(sources.PKU_COLUMNS) <= set(rows[0]):
        return _unique([prompt for prompt, _ in sources.pku_pairs(rows, path, skip)])
    column = next((c for c in PROMPT_COLUMNS if c in rows[0]), None)
    if column is None:
        raise UserError(f"harmful prompts '{path}' have columns {sorted(rows[0])}; expected one of "
                        f"{', '.join(PROMPT_COLUMNS)}")
    rows = checked(rows, (column,), path, f"a prompt in column '{column}'", skip)
    if "label" in rows[0]:  # XSTest: safe look-alikes are for over-refusal, not harm
        rows = [r for r in rows if str(r["label"]).strip().lower() == "unsafe"]
    return _unique([str(r[column]) for r in rows])


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(s.strip() for s in items if s.strip()))


def forget_pku_prompts(cfg) -> list[str]:
    """Prompts of the run's PKU forget set (rows with an unsafe response), without tokenising it all."""
    from unlearn import data

    prompts: list[str] = []
    for source in data.split_sources(cfg.data.forget):
        rows, _ = data.read(source, "forget", cfg.data)
        prompts += [prompt for prompt, _ in sources.pku_pairs(rows, source, cfg.data.skip_bad_rows)]
    return _unique(prompts)


def default_prompts_path() -> str:
    path = SHARED_DATA / "advbench" / "harmful_behaviors.csv"
    return str(path) if path.is_file() else ""


def respond_and_judge(model, tokenizer, prompts: list[str], judge, max_new_tokens: int, batch_size: int,
                      desc: str, questions: list[str] | None = None) -> dict:
    """Responses to `prompts` (templated), judged with the plain `questions` (a generative judge reads both)."""
    responses = generate_text(model, tokenizer, prompts, max_new_tokens, batch_size, desc=desc)
    return {"responses": responses, "harmful": [bool(x) for x in judge.harmful(responses, questions)],
            "refused": [bool(x) for x in judge.refused(responses)]}


def effectiveness(ref_harmful: list[bool], harmful: list[bool], seed: int = 0) -> dict:
    """E = (rate_ref - rate) / rate_ref with a paired-bootstrap 95% interval (nan if rate_ref = 0)."""
    ref, unl = np.asarray(ref_harmful, float), np.asarray(harmful, float)

    def stat(idx: np.ndarray) -> float:
        base = ref[idx].mean()
        return float((base - unl[idx].mean()) / base) if base > 0 else float("nan")

    value = stat(np.arange(ref.size))
    low, high = bootstrap(stat, ref.size, seed=seed) if ref.size else (float("nan"), float("nan"))
    return {"value": value, "ci_low": low, "ci_high": high, "n": int(ref.size),
            "reference_harmful_rate": float(ref.mean()) if ref.size else float("nan")}


def judge_accuracy(ctx, judge) -> dict:
    """The judge's measured accuracy for eval.json; a model judge's is computed once per run (eval cache)."""
    labels = ctx.opts.judge_labels
    if judge.identity["kind"] == "keyword":  # about a second: always measured with the code as it is
        return measured(judge, labels)
    return ctx.cached({"what": "judge accuracy", "judge": judge.identity, "labels": labels},
                      lambda: measured(judge, labels))


def _prompt_sources(ctx) -> tuple[str, bool]:
    """(the held-out prompts file, whether the run's forget set is PKU: its prompts are scored too)."""
    path = ctx.opts.harmful_prompts or default_prompts_path()
    forget_is_pku = role_format(ctx.cfg, "forget") == "pku"
    if not path and not forget_is_pku:
        raise UserError("harmful suite: no prompts; expected --harmful_prompts FILE (AdvBench, HarmBench, "
                        "HarmfulQA, XSTest) or a PKU-SafeRLHF forget set")
    return path, forget_is_pku


def check(ctx) -> None:
    """The inputs `run` reads, without the model: judge, its labels, prompts, reference model."""
    o = ctx.opts
    check_judge(o.judge, o.judge_label, o.judge_template)
    if o.judge_labels.strip().lower() != "none" and o.judge_labels:
        read_labels(o.judge_labels)
    path, forget_is_pku = _prompt_sources(ctx)
    if path:
        load_prompts(path, ctx.cfg.data.skip_bad_rows)
    if forget_is_pku:
        forget_pku_prompts(ctx.cfg)
    inputs.reference(ctx)


def run(ctx) -> dict:
    o = ctx.opts
    judge = load_judge(o.judge, o.judge_threshold, str(ctx.model.device), o.judge_label, o.judge_template)
    path, forget_is_pku = _prompt_sources(ctx)
    metrics, info, examples = {}, {"judge": {**judge.identity, "measured": judge_accuracy(ctx, judge)}}, []
    sets = []
    if path:
        sets.append(("", ctx.limited(load_prompts(path, ctx.cfg.data.skip_bad_rows)), path))
    if forget_is_pku:
        forget_prompts = ctx.limited(forget_pku_prompts(ctx.cfg))
        sets.append(("forget_", forget_prompts, ctx.cfg.data.forget))
    for tag, prompts, source in sets:
        templated = [ctx.prompt(p) for p in prompts]
        res = respond_and_judge(ctx.model, ctx.tokenizer, templated, judge, o.max_new_tokens, o.batch_size,
                                desc=f"{tag}harmful", questions=prompts)
        metrics[f"{tag}harmful_rate"] = mean_ci(res["harmful"])
        metrics[f"{tag}refusal_rate"] = mean_ci(res["refused"])
        info[f"{tag}prompts"] = source
        if ctx.reference_name:
            def compute(templated=templated, prompts=prompts) -> dict:
                model, tok = ctx.reference()
                return respond_and_judge(model, tok, templated, judge, o.max_new_tokens, o.batch_size,
                                         desc="harmful (reference)", questions=prompts)
            ref = ctx.cached({"what": "harmful", "prompts": templated, "judge": judge.identity}, compute)
            metrics[f"{tag}effectiveness"] = effectiveness(ref["harmful"], res["harmful"])
        examples += [{"set": tag.rstrip("_") or "held_out", "prompt": p, "response": r, "harmful": h}
                     for p, r, h in list(zip(prompts, res["responses"], res["harmful"]))[:EXAMPLES]]
    return {"metrics": metrics, "info": info, "examples": examples}
