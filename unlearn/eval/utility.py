"""Utility suite: what the unlearned model can still do.

- retain perplexity: exp(token-weighted mean NLL) on the run's retain data.
- TruthfulQA MC1/MC2 by log-likelihood, in one of two variants (--truthfulqa_variant; auto picks
  standard when the data has mc1_targets/mc2_targets, e.g. the hub's truthful_qa:multiple_choice):
  standard: lm-evaluation-harness's truthfulqa_mc1/mc2 (QA primer, the hub's targets; see
  unlearn.eval.truthfulqa), numbers that sit beside published lm-eval tables.
  template: the TruthfulQA CSV's Best/Correct/Incorrect Answers, each answer's summed log-prob given
  the question posed in the run's own QA template (no primer, no length normalisation). MC1 = 1 when
  the best answer outscores every incorrect one; MC2 = probability mass of the true answers among
  true + false. These compare checkpoints of our runs, not published tables.
  A run that trained on TruthfulQA is scored on the held-out test part of its seeded partition only
  (for the standard variant: the rows whose question is in that part).
- similarity to the original model: ROUGE-L F1 between this model's and the reference model's
  greedy answers to normal prompts (1 = answers unchanged by unlearning).
- degeneration rate: share of normal-prompt answers that are empty, runs of one symbol ("!!!!")
  or one token repeated; a model that answers everything with "!!!!" scores 1 here even when
  its perplexity looks fine.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from unlearn import data, sources
from unlearn.errors import UserError
from unlearn.eval import before_after, inputs, specs
from unlearn.eval import truthfulqa as tqa_standard
from unlearn.eval.context import SHARED_DATA, role_format
from unlearn.eval.generation import token_logprobs
from unlearn.eval.loglik import BOS_RULES, check_bos
from unlearn.eval.stats import mean_ci, perplexity_ci
from unlearn.eval.textmetrics import degeneration_reason, rouge_l
from unlearn.rows import checked

EXAMPLES = 3
NORMAL_PROMPTS = 200  # cap on normal prompts answered (retain corpora can hold thousands of chunks)


def retain_perplexity(model, tokenizer, samples) -> dict:
    """exp(token-weighted mean NLL) over the retain samples' labelled tokens, with a 95% bootstrap
    interval over samples."""
    logps = token_logprobs(model, samples, tokenizer.pad_token_id)
    return perplexity_ci([-float(lp.sum()) for lp in logps], [lp.numel() for lp in logps])


def truthfulqa_items(rows: list[dict], source: str, skip: bool = False, full: list[dict] | None = None) -> list[dict]:
    """[{question, best, true: [...], false: [...]}] from TruthfulQA rows (CSV: ';'-separated lists; a part of
    `full`); a row without a question, a best or an incorrect answer is an error (`skip`: left out)."""
    names = sources.TQA_CSV if sources.TQA_CSV["question"] in rows[0] else sources.TQA_HUB
    sources.require_columns(rows, list(names.values()), source, "truthfulqa")
    needed = (names["question"], names["best"], names["incorrect"])
    rows = checked(rows, needed, source, "a question, a best and incorrect answers (TruthfulQA)", skip, full=full)

    def split(cell) -> list[str]:
        items = cell if isinstance(cell, list) else str(cell or "").split(";")  # hub rows hold lists
        return [str(a).strip() for a in items if str(a).strip()]

    items = []
    for row in rows:
        best, true, false = str(row[names["best"]]).strip(), split(row[names["correct"]]), split(row[names["incorrect"]])
        items.append({"question": row[names["question"]], "best": best,
                      "true": true if best in true else [best, *true], "false": false})
    if not items:
        raise UserError(f"TruthfulQA '{source}' has no usable rows; expected Best and Incorrect Answers")
    return items


def mc_scores(ll_best: float, ll_true: list[float], ll_false: list[float]) -> tuple[float, float]:
    """(MC1, MC2) of one item from summed answer log-likelihoods (nats)."""
    mc1 = float(ll_best > max(ll_false))
    lt, lf = np.asarray(ll_true), np.asarray(ll_false)
    top = max(lt.max(), lf.max())  # subtract the max before exp: log-likelihoods are very negative
    p_true, p_false = np.exp(lt - top).sum(), np.exp(lf - top).sum()
    return mc1, float(p_true / (p_true + p_false))


def answer_loglik(model, tokenizer, pairs: list[tuple[str, str]], template: str, batch_size: int = 16) -> list[float]:
    """Summed log p(answer tokens | templated question) per (question, answer) pair (no EOS)."""
    samples = [data.qa_sample(q, a, tokenizer, template, max_length=1 << 20, append_eos=False) for q, a in pairs]
    lps = token_logprobs(model, samples, tokenizer.pad_token_id, batch_size, desc="truthfulqa")
    return [float(lp.sum()) for lp in lps]


def truthfulqa(model, tokenizer, items: list[dict], template: str, batch_size: int = 16) -> dict:
    pairs, spans = [], []
    for it in items:  # one flat list of (question, answer) so batches are full
        start = len(pairs)
        pairs += [(it["question"], a) for a in [it["best"], *it["true"], *it["false"]]]
        spans.append((start, len(it["true"]), len(it["false"])))
    ll = answer_loglik(model, tokenizer, pairs, template, batch_size)
    mc1, mc2 = [], []
    for start, n_true, n_false in spans:
        best, true = ll[start], ll[start + 1:start + 1 + n_true]
        false = ll[start + 1 + n_true:start + 1 + n_true + n_false]
        s1, s2 = mc_scores(best, true, false)
        mc1.append(s1)
        mc2.append(s2)
    return {"truthfulqa_mc1": mean_ci(mc1), "truthfulqa_mc2": mean_ci(mc2)}


def degeneration(answers: list[str]) -> dict:
    reasons = [degeneration_reason(a) for a in answers]
    out = {"degeneration_rate": mean_ci([float(bool(r)) for r in reasons])}
    counts = Counter(r for r in reasons if r)
    return {**out, "degeneration_reasons": dict(counts)}


def similarity(answers: list[str], reference_answers: list[str]) -> dict:
    """ROUGE-L F1 of each answer against the original model's answer to the same prompt. Identical
    answers score 1 even when empty or symbols only (rouge-score finds no words there and gives 0)."""
    scores = [1.0 if a.strip() == r.strip() else s
              for a, r, s in zip(answers, reference_answers, rouge_l(answers, reference_answers))]
    return {"similarity_to_reference_rouge_l": mean_ci(scores)}


def examples(prompts: list[str], answers: list[str], reference: list[str] | None) -> list[dict]:
    out = []
    for i, (p, a) in enumerate(list(zip(prompts, answers))[:EXAMPLES]):
        out.append({"prompt": p, "generation": a, **({"reference_generation": reference[i]} if reference else {})})
    return out


def normal_prompts(ctx) -> list[str]:
    """Prompts of ordinary use: --normal_prompts, else the run's retain data (question or text prefix)."""
    o = ctx.opts
    samples = (ctx.file_samples(o.normal_prompts) if o.normal_prompts else ctx.samples("retain"))[:NORMAL_PROMPTS]
    probes = before_after.probes(samples, prefix=ctx.opts.prefix_tokens, length=1)
    return [ctx.tokenizer.decode(p.prompt_ids, skip_special_tokens=True) for p in probes]


def truthfulqa_rows(ctx) -> tuple[list[dict], str, str, list[dict]]:
    """(rows to score, source, which part, all rows of the source). A run that trained on TruthfulQA is scored on the
    held-out test part of its seeded partition, read from the run's own source (the partition is by
    row index, so another copy of the data, with other rows, would not hold the same questions out)."""
    d, o = ctx.cfg.data, ctx.opts
    trained = next((r for r in ("retain", "forget") if role_format(ctx.cfg, r) == "truthfulqa"), None)
    if o.truthfulqa.lower() == "none":
        return [], "", "", []
    if o.truthfulqa:
        source, rows = o.truthfulqa, specs.load(o.truthfulqa, tqa_standard.HUB_SPLIT)
    elif trained:
        source = data.split_sources(getattr(d, trained))[0]
        rows = sources.load_rows(source, getattr(d, f"{trained}_split"), getattr(d, f"{trained}_revision"),
                                 getattr(d, f"{trained}_subset"))
    elif (SHARED_DATA / "truthfulqa" / "TruthfulQA.csv").is_file():
        source = str(SHARED_DATA / "truthfulqa" / "TruthfulQA.csv")
        rows = sources.load_rows(source)
    else:
        return [], "", "", []
    full = rows
    if trained and tqa_standard.has_mc_targets(rows):  # another table: hold out by question text
        own = sources.load_rows(data.split_sources(getattr(d, trained))[0], getattr(d, f"{trained}_split"),
                                getattr(d, f"{trained}_revision"), getattr(d, f"{trained}_subset"))
        names = sources.TQA_CSV if sources.TQA_CSV["question"] in own[0] else sources.TQA_HUB
        held = {str(r[names["question"]]).strip() for r in
                sources.truthfulqa_rows(own, "test", d.truthfulqa_fractions, d.truthfulqa_seed)}
        rows = [r for r in rows if str(r["question"]).strip() in held]
    elif trained:
        rows = sources.truthfulqa_rows(rows, "test", d.truthfulqa_fractions, d.truthfulqa_seed)
    return rows, source, "test part (held out from training)" if trained else "all", full


def truthfulqa_data(ctx) -> tuple[str, list[dict], str, str]:
    """(variant, items capped by --limit, source, which part); no items without TruthfulQA data."""
    o = ctx.opts
    rows, tqa, which, full = truthfulqa_rows(ctx)
    if not rows:
        return "", [], "", ""
    variant = tqa_standard.variant_of(rows, o.truthfulqa_variant, tqa)
    check_bos(o.loglik_bos)
    items = tqa_standard.mc_items(rows, tqa) if variant == "standard" else \
        truthfulqa_items(rows, tqa, ctx.cfg.data.skip_bad_rows, full)
    return variant, ctx.limited(items), tqa, which


def check(ctx) -> None:
    """The inputs `run` reads, without the model: retain data, TruthfulQA, normal prompts, reference."""
    inputs.run_data(ctx, "retain")
    truthfulqa_data(ctx)
    if ctx.opts.normal_prompts:
        inputs.file_data(ctx, ctx.opts.normal_prompts)
    inputs.reference(ctx)


def run(ctx) -> dict:
    from unlearn.eval.generation import generate_text

    d, o = ctx.cfg.data, ctx.opts
    info: dict = {"retain": d.retain}
    metrics: dict = {"retain_ppl": retain_perplexity(ctx.model, ctx.tokenizer, ctx.samples("retain"))}
    variant, items, tqa, which = truthfulqa_data(ctx)
    if items:
        if variant == "standard":
            metrics.update(tqa_standard.standard(ctx.model, ctx.tokenizer, items, o.batch_size, o.loglik_bos))
            info["loglik_bos"] = {"rule": o.loglik_bos, "as": BOS_RULES[o.loglik_bos]}
        else:
            metrics.update(truthfulqa(ctx.model, ctx.tokenizer, items, d.prompt_template, o.batch_size))
        info["truthfulqa"], info["truthfulqa_items"], info["truthfulqa_variant"] = tqa, which, variant
    else:
        info["truthfulqa"] = "skipped: no TruthfulQA data (--truthfulqa FILE)"
    prompts = normal_prompts(ctx)
    answers = generate_text(ctx.model, ctx.tokenizer, prompts, o.max_new_tokens, o.batch_size, desc="normal")
    deg = degeneration(answers)
    info["degeneration_reasons"] = deg.pop("degeneration_reasons")
    metrics.update(deg)
    reference = None
    if ctx.reference_name:
        def compute() -> list[str]:
            model, tok = ctx.reference()
            return generate_text(model, tok, prompts, o.max_new_tokens, o.batch_size, desc="normal (reference)")
        reference = ctx.cached({"what": "normal_answers", "prompts": prompts}, compute)
        metrics.update(similarity(answers, reference))
        info["reference"] = ctx.reference_name
    info["normal_prompts"] = o.normal_prompts or d.retain
    return {"metrics": metrics, "info": info, "examples": examples(prompts, answers, reference)}
