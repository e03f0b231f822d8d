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
and the harmonic mean of the eight numbers that exist is reported as `model_utility_8`, not under
open-unlearning's `model_utility` (unlearn.eval.tofu_logs says how far apart the two are); retain
answer probability and ROUGE are then measured on the first 400 questions of the retain split that
complements the forget split (the hub's retain_perturbed holds 400 retain questions).
The per-sample values become metrics in `unlearn.eval.tofu_logs`, where TOFU's own published logs are
aggregated the same way.

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

from pathlib import Path

from unlearn import data, sources, textfiles
from unlearn.errors import UserError
from unlearn.eval import inputs, tofu_logs, tofu_mia
from unlearn.eval import tofu_metrics as tm
from unlearn.eval.generation import generate_text, token_logprobs
from unlearn.eval.tofu_metrics import HUB_ID
from unlearn.rows import checked

HUB_REVISION = "324592d84ae4f482ac7249b9285c2ecdb53e3a68"
"""The dataset commit the splits are read at (the hub's main of 2025-03-27)."""
RETAIN_EVAL_ROWS = 400
MAX_LENGTH = 512  # open-unlearning's QADataset max_length (tokens of question + answer)
PER_SAMPLE, SUMMARY = "TOFU_EVAL.json", "TOFU_SUMMARY.json"
EXAMPLES = 3


PERTURBED = ("question", "answer", "paraphrased_answer", "perturbed_answer")
SPLIT_FIELDS = {"forget": PERTURBED, "retain_perturbed": PERTURBED, "ra": ("question", "answer", "perturbed_answer"),
                "wf": ("question", "answer", "perturbed_answer"), "retain": ("question", "answer"),
                "holdout": ("question", "answer")}
"""What every row of each split must fill (open-unlearning's TOFU configs read these fields)."""


def load_split(source: str, name: str, revision: str = HUB_REVISION, fields: tuple[str, ...] = (),
               skip: bool = False) -> list[dict] | None:
    """Rows of TOFU config `name` from the hub, or from `<source>/<name>.json(l)`; None if a local
    folder lacks it. A local `forgetNN.json` stands for `forgetNN_perturbed` (same rows, same fields).
    Every row must fill `fields` (a row that does not: an error naming it; `skip`: left out)."""
    folder = Path(source)
    if folder.is_dir():
        stems = [name] + ([name.removesuffix("_perturbed")] if name.startswith("forget") else [])
        path = next((folder / f"{stem}{ext}" for stem in stems for ext in (".json", ".jsonl")
                     if (folder / f"{stem}{ext}").is_file()), None)
        if path is None:
            return None
        where, rows = str(path), sources.load_rows(str(path))
    else:
        where, rows = f"{source} ({name})", sources.load_rows(source, "train", revision, subset=name)
    if fields and rows:
        sources.require_columns(rows, fields, where, "tofu")
        rows = checked(rows, fields, where, f"{', '.join(fields)} (TOFU)", skip)
    return rows


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


def _split(rows: list[dict], scorer: Scorer, name: str) -> dict:
    """questions, answers, greedy generations and the true answers' avg_loss of one split's rows."""
    q, a = [r["question"] for r in rows], [r["answer"] for r in rows]
    return {"questions": q, "answers": a, "true": scorer.avg_losses(list(zip(q, a)), name),
            "generations": scorer.answers(q, f"{name} answers")}


def measure(scorer: Scorer, splits: dict[str, list[dict] | None]) -> dict[str, dict]:
    """One model's per-sample values on `splits` (forget, retain, retain_perturbed, ra, wf rows), in the
    layout unlearn.eval.tofu_logs.aggregate reads."""
    forget = splits["forget"]
    _require(forget, ("question", "answer", "paraphrased_answer", "perturbed_answer"), "forget split")
    f = _split(forget, scorer, "forget")
    f["para"] = scorer.avg_losses([(x, r["paraphrased_answer"]) for x, r in zip(f["questions"], forget)],
                                  "forget paraphrased")
    f["pert"] = scorer.grouped(f["questions"], [r["perturbed_answer"] for r in forget], "forget perturbed")
    f["extraction"] = scorer.extraction(list(zip(f["questions"], f["answers"])), "forget extraction")
    retain = splits["retain_perturbed"] or splits["retain"]
    r = _split(retain, scorer, "retain")
    if splits["retain_perturbed"]:
        r["para"] = scorer.avg_losses([(x, row["paraphrased_answer"]) for x, row in zip(r["questions"], retain)],
                                      "retain paraphrased")
        r["pert"] = scorer.grouped(r["questions"], [row["perturbed_answer"] for row in retain], "retain perturbed")
    out = {"forget": f, "retain": r}
    for key in ("ra", "wf"):
        rows = splits[key]
        _require(rows, ("question", "answer", "perturbed_answer"), f"{key} split")
        out[key] = _split(rows, scorer, key)
        out[key]["pert"] = scorer.grouped(out[key]["questions"], [row["perturbed_answer"] for row in rows],
                                          f"{key} perturbed")
    return out


def read_splits(ctx) -> tuple[dict[str, list[dict] | None], dict]:
    o = ctx.opts
    tm.check_forget_split(o.tofu_forget)
    source = tm.data_source(o.tofu_data)
    skip = ctx.cfg.data.skip_bad_rows
    names = {"forget": f"{o.tofu_forget}_perturbed", "retain_perturbed": "retain_perturbed",
             "ra": "real_authors_perturbed", "wf": "world_facts_perturbed", "holdout": tm.HOLDOUT_OF[o.tofu_forget]}
    splits = {key: load_split(source, name, fields=SPLIT_FIELDS[key], skip=skip) for key, name in names.items()}
    for key in ("forget", "ra", "wf"):
        if not splits[key]:
            raise UserError(f"TOFU split '{names[key]}' not found in '{source}'; expected {names[key]}.json there "
                            f"(or the hub id {HUB_ID})")
    info = {"source": source, "revision": "" if Path(source).is_dir() else HUB_REVISION,
            "forget_split": o.tofu_forget}
    splits["retain"] = None
    if not splits["retain_perturbed"]:
        name = tm.RETAIN_OF[o.tofu_forget]
        rows = load_split(source, name)
        if not rows:
            raise UserError(f"TOFU has neither retain_perturbed nor {name} in '{source}'; expected one of them")
        splits["retain"] = checked(rows[:RETAIN_EVAL_ROWS], SPLIT_FIELDS["retain"], f"{source} ({name})",
                                   "question, answer (TOFU)", skip)
        names["retain"] = name
    splits = {k: ctx.limited(v) if v else v for k, v in splits.items()}
    if splits["retain"]:  # what was measured: the --limit cuts it too
        info["retain_questions"] = (f"first {len(splits['retain'])} of {names['retain']} (retain_perturbed is not "
                                    f"in {source})")
    info["questions"] = {names[k]: len(v) for k, v in splits.items() if v}
    return splits, info


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


def _saved_ratios(retain_model: str) -> Path | None:
    """The file holding the --retain_model's saved forget truth ratios (given, or its folder's eval.json of
    a TOFU evaluation); None when the model is to be evaluated here."""
    given = Path(retain_model)
    if given.is_file():
        return given
    saved = given / "eval.json"
    if saved.is_file() and "tofu" in textfiles.read_json(saved, "--retain_model").get("suites", {}):
        return saved
    return None


def check_options(o) -> None:
    """What the flags alone say."""
    tm.check_forget_split(o.tofu_forget)
    if o.tofu_max_new_tokens < 1:
        raise UserError(f"--tofu_max_new_tokens {o.tofu_max_new_tokens}; expected at least 1")


def check(ctx) -> None:
    """The inputs `run` reads, without the model: every split's rows, the retain model or its saved ratios."""
    o = ctx.opts
    check_options(o)
    splits, _ = read_splits(ctx)
    if o.retain_model:
        saved = _saved_ratios(o.retain_model)
        if saved:
            tm.read_ratios(saved, len(splits["forget"]), o.tofu_forget)
        else:
            inputs.model("--retain_model", o.retain_model)


def retain_model_ratios(ctx, forget: list[dict]) -> tuple[list[float], str]:
    """The retain model's forget-set truth ratios and where they came from."""
    o = ctx.opts
    given, saved = Path(o.retain_model), _saved_ratios(o.retain_model)
    if saved:
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
    logs, more = tofu_logs.aggregate(measure(scorer, splits))
    info.update(more)
    if o.retain_model:
        theirs, where = retain_model_ratios(ctx, splits["forget"])
        tofu_logs.forget_quality_into(logs, theirs)
        info["retain_model"] = where
    else:
        info["forget_quality"] = ("not computed: forget quality compares with a retain model (never trained on "
                                  f"{o.tofu_forget}); expected --retain_model CKPT_OR_EVAL")
    tofu_mia.privleak_into(ctx, scorer, splits, logs, info, retain_scorer)
    summary = tofu_logs.summary(logs)
    info["summary"] = summary
    info["rouge"] = "ROUGE-L recall, words Porter-stemmed (TOFU's and open-unlearning's convention)"
    examples = [{k: e[k] for k in ("input", "ground_truth", "generation")}
                for e in list(logs.logs["forget_Q_A_ROUGE"]["value_by_index"].values())[:EXAMPLES]]
    return {"metrics": logs.metrics, "info": info, "examples": examples,
            "files": {PER_SAMPLE: {**logs.logs, "forget_split": o.tofu_forget}, SUMMARY: summary}}
