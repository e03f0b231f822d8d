"""TOFU suite: forget quality, model utility and their parts, as open-unlearning reports them.

    python launch/evaluate.py CKPT --suite tofu --tofu_forget forget10 [--retain_model CKPT_OR_EVAL]

Splits load by name: from the hub (`locuslab/TOFU` at a pinned revision, config `<split>`, split
`train`), or from a folder of `<split>.json` files (`--tofu_data`; ../shared/data/tofu when present).
The formulas are in `unlearn.eval.tofu_metrics`; what is measured on which split follows
open-unlearning's configs/eval/tofu_metrics/*.yaml:
- forget (`<forget>_perturbed`): answer probability and ROUGE-L recall of the greedy answer to the
  question, truth ratio of the paraphrased answer against the perturbed ones (closer_to_1_better),
  forget quality against the retain model's forget truth ratios, extraction strength, and with TOFU's
  holdout split (`holdoutNN`, hub only) mia_min_k and privleak (`unlearn.eval.tofu_mia`);
- retain (`retain_perturbed`), real authors (`real_authors_perturbed`), world facts
  (`world_facts_perturbed`): the nine numbers of model utility.
`retain_perturbed` is on the hub only. Without it the retain truth ratio is missing (never made up),
model utility is the harmonic mean of the eight numbers that exist and the suite's info names the
missing one; retain answer probability and ROUGE are then measured on the first 400 questions of the
retain split that complements the forget split (the hub's retain_perturbed holds 400 retain questions).

Prompt: the checkpoint's own `data.prompt_template`, as it was trained (the TOFU presets use
open-unlearning's base-model tags, "Question: {prompt}\\nAnswer: {response}"). Each answer is scored
with EOS appended, as open-unlearning's collation does; unlike it, the whitespace between the answer
tag and the answer belongs to the answer (data.qa_sample), so the first answer token is scored (with
a tag that ends in a space, open-unlearning's label mask drops that token for byte-level BPE models).
Generation: greedy, `--tofu_max_new_tokens` (open-unlearning: 200), stopped at EOS.

Writes, beside eval.json, TOFU_EVAL.json (per-sample values, laid out as open-unlearning's
TOFU_EVAL.json: metric -> {agg_value, value_by_index}) and TOFU_SUMMARY.json (its summary keys).
`--retain_model` takes a retain model's checkpoint or model folder (evaluated here, or its saved
TOFU evaluation reused), its eval.json, or a TOFU_EVAL.json from this suite or from open-unlearning.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unlearn import data, sources
from unlearn.errors import UserError
from unlearn.eval import tofu_metrics as tm
from unlearn.eval import tofu_mia
from unlearn.eval.context import SHARED_DATA
from unlearn.eval.generation import generate_text, token_logprobs
from unlearn.eval.stats import mean_ci
from unlearn.eval.textmetrics import rouge_l

HUB_ID = "locuslab/TOFU"
HUB_REVISION = "324592d84ae4f482ac7249b9285c2ecdb53e3a68"
"""The dataset commit the splits are read at (the hub's main of 2025-03-27)."""
RETAIN_EVAL_ROWS = 400
MAX_LENGTH = 512  # open-unlearning's QADataset max_length (tokens of question + answer)
PER_SAMPLE, SUMMARY = "TOFU_EVAL.json", "TOFU_SUMMARY.json"
EXAMPLES = 3


def data_source(tofu_data: str) -> str:
    if tofu_data:
        return tofu_data
    return str(SHARED_DATA / "tofu") if (SHARED_DATA / "tofu").is_dir() else HUB_ID


def load_split(source: str, name: str, revision: str = HUB_REVISION) -> list[dict] | None:
    """Rows of TOFU config `name` from the hub, or from `<source>/<name>.json(l)`; None if a local
    folder lacks it. A local `forgetNN.json` stands for `forgetNN_perturbed` (same rows, same fields)."""
    folder = Path(source)
    if not folder.is_dir():
        return sources.load_rows(source, "train", revision, subset=name)
    names = [name] + ([name.removesuffix("_perturbed")] if name.startswith("forget") else [])
    for stem in names:
        for ext in (".json", ".jsonl"):
            if (folder / f"{stem}{ext}").is_file():
                return sources.load_rows(str(folder / f"{stem}{ext}"))
    return None


def _require(rows: list[dict], columns: tuple[str, ...], what: str) -> None:
    sources.require_columns(rows, columns, what, "tofu")


class Scorer:
    """Per-answer avg_loss (mean NLL over the answer's tokens + EOS) and greedy answers of one model."""

    def __init__(self, model, tokenizer, template: str, batch_size: int, max_new_tokens: int):
        self.model, self.tok, self.template, self.batch = model, tokenizer, template, batch_size
        positions = getattr(model.config, "max_position_embeddings", MAX_LENGTH)
        self.max_length, self.max_new = min(MAX_LENGTH, positions), max_new_tokens

    def avg_losses(self, pairs: list[tuple[str, str]], desc: str) -> list[float | None]:
        samples = [data.qa_sample(q, a, self.tok, self.template, self.max_length, append_eos=True) for q, a in pairs]
        lps = token_logprobs(self.model, samples, self.tok.pad_token_id, self.batch, desc=desc)
        return [float(-lp.mean()) if lp.numel() else None for lp in lps]

    def extraction(self, pairs: list[tuple[str, str]], desc: str) -> list[float]:
        """Extraction strength per pair from one teacher-forced pass (answer tokens, EOS excluded)."""
        import torch

        samples = [data.qa_sample(q, a, self.tok, self.template, self.max_length, append_eos=True) for q, a in pairs]
        device, out = next(self.model.parameters()).device, []
        with torch.no_grad():
            for start in range(0, len(samples), self.batch):
                batch = data.collate(samples[start:start + self.batch], self.tok.pad_token_id)
                logits = self.model(input_ids=batch["input_ids"].to(device),
                                    attention_mask=batch["attention_mask"].to(device)).logits
                predicted = logits.argmax(-1).cpu()                 # (B, T): position t predicts token t+1
                for row, labels in zip(predicted, batch["labels"]):
                    where = (labels != data.IGNORE).nonzero().flatten()[:-1].tolist()  # drop the EOS
                    out.append(tm.extraction_strength([int(row[i - 1]) for i in where],
                                                      [int(labels[i]) for i in where]))
        return out

    def grouped(self, questions: list[str], answers: list[list[str]], desc: str) -> list[list[float | None]]:
        """avg_loss of each of several answers per question (one flat pass, so batches are full)."""
        flat = self.avg_losses([(q, a) for q, group in zip(questions, answers) for a in group], desc)
        out, start = [], 0
        for group in answers:
            out.append(flat[start:start + len(group)])
            start += len(group)
        return out

    def answers(self, questions: list[str], desc: str) -> list[str]:
        head = self.template.partition("{response}")[0]
        prompts = [head.replace("{prompt}", q).rstrip() for q in questions]
        longest = max(len(self.tok(p)["input_ids"]) for p in prompts)
        room = getattr(self.model.config, "max_position_embeddings", longest + self.max_new) - longest
        return generate_text(self.model, self.tok, prompts, max(1, min(self.max_new, room)), self.batch, desc=desc)


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

    def probability(self, name: str, losses: list) -> None:
        entries = [_prob_entry(x) for x in losses]
        # several answers per question: open-unlearning averages their probabilities (aggregate_to_1D)
        probs = [None if e["prob"] is None else float(np.mean(e["prob"])) for e in entries]
        self.per_sample(name, entries, probs)

    def truth_ratio(self, name: str, true_losses: list, false_losses: list, forget: bool) -> list[float | None]:
        ratios = [None if t is None or None in f else tm.truth_ratio(t, f) for t, f in zip(true_losses, false_losses)]
        agg = tm.closer_to_1_better if forget else tm.true_better
        self.per_sample(name, [{"score": r} for r in ratios], [None if r is None else agg([r]) for r in ratios])
        return ratios

    def over_options(self, name: str, true_losses: list, false_losses: list) -> None:
        values = [None if t is None or None in f else tm.prob_over_options(tm.prob_of(t), tm.prob_of(f))
                  for t, f in zip(true_losses, false_losses)]
        self.per_sample(name, [{"prob": v} for v in values], values)

    def rouge(self, name: str, questions: list[str], answers: list[str], generations: list[str]) -> None:
        recall = rouge_l(generations, answers, kind="recall", stemmer=True)
        f1 = rouge_l(generations, answers, stemmer=True)
        entries = [{"rougeL_recall": r, "rougeL_f1": f, "input": q, "ground_truth": a, "generation": g}
                   for r, f, q, a, g in zip(recall, f1, questions, answers, generations)]
        self.per_sample(name, entries, recall)


def evaluate_splits(scorer: Scorer, splits: dict[str, list[dict] | None]) -> tuple[Logs, dict]:
    """Every TOFU number of one model on `splits` (forget, retain, retain_perturbed, ra, wf rows)."""
    logs, info = Logs(), {}
    forget = splits["forget"]
    _require(forget, ("question", "answer", "paraphrased_answer", "perturbed_answer"), "forget split")
    q = [r["question"] for r in forget]
    logs.probability("forget_Q_A_Prob", scorer.avg_losses([(x, r["answer"]) for x, r in zip(q, forget)], "forget"))
    para = scorer.avg_losses([(x, r["paraphrased_answer"]) for x, r in zip(q, forget)], "forget paraphrased")
    pert = scorer.grouped(q, [r["perturbed_answer"] for r in forget], "forget perturbed")
    logs.probability("forget_Q_A_PARA_Prob", para)
    logs.probability("forget_Q_A_PERT_Prob", pert)
    logs.truth_ratio("forget_truth_ratio", para, pert, forget=True)
    logs.rouge("forget_Q_A_ROUGE", q, [r["answer"] for r in forget], scorer.answers(q, "forget answers"))
    es = scorer.extraction([(x, r["answer"]) for x, r in zip(q, forget)], "forget extraction")
    logs.per_sample("extraction_strength", [{"score": v} for v in es], es)

    retain = splits["retain_perturbed"] or splits["retain"]
    q = [r["question"] for r in retain]
    logs.probability("retain_Q_A_Prob", scorer.avg_losses([(x, r["answer"]) for x, r in zip(q, retain)], "retain"))
    logs.rouge("retain_Q_A_ROUGE", q, [r["answer"] for r in retain], scorer.answers(q, "retain answers"))
    if splits["retain_perturbed"]:
        para = scorer.avg_losses([(x, r["paraphrased_answer"]) for x, r in zip(q, retain)], "retain paraphrased")
        pert = scorer.grouped(q, [r["perturbed_answer"] for r in retain], "retain perturbed")
        logs.probability("retain_Q_A_PARA_Prob", para)
        logs.probability("retain_Q_A_PERT_Prob", pert)
        logs.truth_ratio("retain_Truth_Ratio", para, pert, forget=False)

    for key in ("ra", "wf"):
        rows = splits[key]
        _require(rows, ("question", "answer", "perturbed_answer"), f"{key} split")
        q = [r["question"] for r in rows]
        true = scorer.avg_losses([(x, r["answer"]) for x, r in zip(q, rows)], key)
        false = scorer.grouped(q, [r["perturbed_answer"] for r in rows], f"{key} perturbed")
        logs.probability(f"{key}_Q_A_Prob", true)
        logs.probability(f"{key}_Q_A_PERT_Prob", false)
        logs.over_options(f"{key}_Q_A_Prob_normalised", true, false)
        logs.truth_ratio(f"{key}_Truth_Ratio", true, false, forget=False)
        logs.rouge(f"{key}_Q_A_ROUGE", q, [r["answer"] for r in rows], scorer.answers(q, f"{key} answers"))

    parts = {k: logs.metrics[k]["value"] for k in tm.MODEL_UTILITY if k in logs.metrics}
    missing = [k for k in tm.MODEL_UTILITY if k not in parts]
    logs.metrics["model_utility"] = {"value": tm.model_utility(parts), "n": len(parts)}
    logs.logs["model_utility"] = {"agg_value": logs.metrics["model_utility"]["value"]}
    info["model_utility_of"] = list(parts)
    if missing:
        info["model_utility_missing"] = {k: "needs retain_perturbed (paraphrased and perturbed retain answers), "
                                            "which only the hub's locuslab/TOFU has" for k in missing}
    return logs, info


def read_splits(ctx) -> tuple[dict[str, list[dict] | None], dict]:
    o = ctx.opts
    tm.check_forget_split(o.tofu_forget)
    source = data_source(o.tofu_data)
    splits = {"forget": load_split(source, f"{o.tofu_forget}_perturbed"),
              "retain_perturbed": load_split(source, "retain_perturbed"),
              "ra": load_split(source, "real_authors_perturbed"), "wf": load_split(source, "world_facts_perturbed")}
    for key, name in (("forget", f"{o.tofu_forget}_perturbed"), ("ra", "real_authors_perturbed"),
                      ("wf", "world_facts_perturbed")):
        if not splits[key]:
            raise UserError(f"TOFU split '{name}' not found in '{source}'; expected {name}.json there "
                            f"(or the hub id {HUB_ID})")
    info = {"source": source, "revision": "" if Path(source).is_dir() else HUB_REVISION,
            "forget_split": o.tofu_forget}
    splits["retain"] = None
    splits["holdout"] = load_split(source, tm.HOLDOUT_OF[o.tofu_forget])
    if not splits["retain_perturbed"]:
        name = tm.RETAIN_OF[o.tofu_forget]
        rows = load_split(source, name)
        if not rows:
            raise UserError(f"TOFU has neither retain_perturbed nor {name} in '{source}'; expected one of them")
        splits["retain"] = rows[:RETAIN_EVAL_ROWS]
        info["retain_questions"] = f"first {RETAIN_EVAL_ROWS} of {name} (retain_perturbed is not in {source})"
    return {k: ctx.limited(v) if v else v for k, v in splits.items()}, info


def retain_scorer(ctx) -> Scorer:
    """A Scorer of the --retain_model's model, in the template it was trained with when it is ours."""
    from unlearn.model import load_for_eval

    o = ctx.opts
    model, tok = load_for_eval(o.retain_model)
    cfg = Path(o.retain_model) / "config.yaml"
    template = ctx.cfg.data.prompt_template
    if cfg.is_file():
        from unlearn.config_io import load_config

        template = load_config([str(cfg)])[0].data.prompt_template
    return Scorer(model, tok, template, o.batch_size, o.tofu_max_new_tokens)


def retain_model_ratios(ctx, forget: list[dict]) -> tuple[list[float], str]:
    """The retain model's forget-set truth ratios and where they came from."""
    o = ctx.opts
    given = Path(o.retain_model)
    if given.is_file():
        return tm.read_ratios(given, len(forget), o.tofu_forget), str(given)
    saved = given / "eval.json"
    if saved.is_file() and "tofu" in json.loads(saved.read_text()).get("suites", {}):
        return tm.read_ratios(saved, len(forget), o.tofu_forget), str(saved)

    def compute() -> list[float]:
        scorer = retain_scorer(ctx)
        q = [r["question"] for r in forget]
        para = scorer.avg_losses([(x, r["paraphrased_answer"]) for x, r in zip(q, forget)], "retain model")
        pert = scorer.grouped(q, [r["perturbed_answer"] for r in forget], "retain model perturbed")
        return [tm.truth_ratio(t, f) for t, f in zip(para, pert)]

    key = {"what": "tofu_forget_truth_ratio", "model": str(given.resolve()) if given.exists() else o.retain_model,
           "questions": [r["question"] for r in forget]}
    return ctx.cached(key, compute), o.retain_model


def run(ctx) -> dict:
    o = ctx.opts
    splits, info = read_splits(ctx)
    scorer = Scorer(ctx.model, ctx.tokenizer, ctx.cfg.data.prompt_template, o.batch_size, o.tofu_max_new_tokens)
    logs, more = evaluate_splits(scorer, splits)
    info.update(more)
    if o.retain_model:
        theirs, where = retain_model_ratios(ctx, splits["forget"])
        ours = [e["score"] for e in logs.logs["forget_truth_ratio"]["value_by_index"].values()]
        fq = tm.forget_quality(ours, theirs)
        logs.metrics["forget_quality"] = {"value": fq, "n": len(ours)}
        logs.logs["forget_quality"] = {"agg_value": fq}
        info["retain_model"] = where
    else:
        info["forget_quality"] = ("not computed: forget quality compares with a retain model (never trained on "
                                  f"{o.tofu_forget}); expected --retain_model CKPT_OR_EVAL")
    tofu_mia.privleak_into(ctx, scorer, splits, logs, info, retain_scorer)
    summary = {k: logs.metrics[k]["value"] for k in tm.SUMMARY if k in logs.metrics}
    info["summary"] = summary
    examples = [{k: e[k] for k in ("input", "ground_truth", "generation")}
                for e in list(logs.logs["forget_Q_A_ROUGE"]["value_by_index"].values())[:EXAMPLES]]
    return {"metrics": logs.metrics, "info": info, "examples": examples,
            "files": {PER_SAMPLE: {**logs.logs, "forget_split": o.tofu_forget}, SUMMARY: summary}}
