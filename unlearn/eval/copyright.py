"""Copyright suite: verbatim and knowledge memorisation of the forget data.

- verbatim (as MUSE's VerbMem measures it: Shi et al. 2024, swj0419/muse_bench metrics/verbmem.py): prompt
  with the first `prefix_tokens` tokens of a forget passage (QA samples: the question), greedily generate
  `continuation_tokens` tokens, and score them against the true next tokens with ROUGE-L F1 (rouge-score,
  unstemmed as MUSE) and sentence BLEU (sacrebleu; Papineni et al. 2002). Unlike MUSE's rows (a ~1,000-token
  prompt, 128 tokens), the windows are the run's own, so short texts can be probed; `--suite muse` is
  MUSE's exact setting. A model that still holds the text scores near 1, one that never saw it near 0.
- knowledge: for QA pairs (TOFU columns question/answer), ROUGE-L F1 and recall of the greedy answer
  against the true answer, Porter-stemmed as TOFU's evaluate_util.py (Maini et al. 2024; TOFU reports recall).
"""

from __future__ import annotations

from unlearn import data
from unlearn.errors import UserError
from unlearn.eval import before_after, inputs
from unlearn.eval.context import role_format
from unlearn.eval.generation import generate_text, greedy
from unlearn.eval.stats import mean_ci
from unlearn.eval.textmetrics import bleu, rouge_l

EXAMPLES = 3  # generations stored in eval.json for a reader to look at


def verbatim(model, tokenizer, samples, prefix_tokens: int, continuation_tokens: int,
             batch_size: int = 16) -> dict:
    """ROUGE-L F1 and BLEU of greedy continuations of forget prefixes against the true text."""
    probes = before_after.probes(samples, prefix=prefix_tokens, length=continuation_tokens)
    # stops at EOS: a model that ends its answer is scored on what it wrote, not on padding
    gens = greedy(model, [p.prompt_ids for p in probes], continuation_tokens, tokenizer.pad_token_id,
                  batch_size, eos_id=tokenizer.eos_token_id, desc="verbatim")
    preds = [tokenizer.decode(g[:len(p.target_ids)], skip_special_tokens=True) for g, p in zip(gens, probes)]
    refs = [tokenizer.decode(p.target_ids, skip_special_tokens=True) for p in probes]
    return {
        "metrics": {"verbatim_rouge_l": mean_ci(rouge_l(preds, refs)), "verbatim_bleu": mean_ci(bleu(preds, refs))},
        "examples": [{"prompt": tokenizer.decode(p.prompt_ids, skip_special_tokens=True), "reference": r,
                      "generation": g} for p, r, g in list(zip(probes, refs, preds))[:EXAMPLES]],
    }


def knowledge_metrics(answers: list[str], refs: list[str]) -> dict:
    """ROUGE-L F1 and recall of answers against the true answers, words Porter-stemmed as TOFU's
    `eval_rouge_recall` and open-unlearning's rouge metric score them (use_stemmer=True)."""
    return {"knowledge_rouge_l": mean_ci(rouge_l(answers, refs, stemmer=True)),
            "knowledge_rouge_l_recall": mean_ci(rouge_l(answers, refs, kind="recall", stemmer=True))}


def knowledge(model, tokenizer, pairs: list[tuple[str, str]], prompts: list[str], max_new_tokens: int,
              batch_size: int = 16) -> dict:
    """ROUGE-L of greedy answers to forget questions (`prompts`: templated) against the true answers."""
    answers = generate_text(model, tokenizer, prompts, max_new_tokens, batch_size, desc="knowledge")
    refs = [a for _, a in pairs]
    return {
        "metrics": knowledge_metrics(answers, refs),
        "examples": [{"question": q, "reference": a, "generation": g}
                     for (q, a), g in list(zip(pairs, answers))[:EXAMPLES]],
    }


def _qa_source(ctx) -> str:
    """--qa, else the forget set's first source when it is QA (knowledge memorisation), else ""."""
    if ctx.opts.qa or role_format(ctx.cfg, "forget") != "qa":
        return ctx.opts.qa
    return data.split_sources(ctx.cfg.data.forget)[0]


def check(ctx) -> None:
    """The inputs `run` reads, without the model: the forget data, the QA file, the probe lengths."""
    o = ctx.opts
    if o.prefix_tokens < 1 or o.continuation_tokens < 1:
        raise UserError(f"--prefix_tokens {o.prefix_tokens} / --continuation_tokens {o.continuation_tokens}; "
                        "expected at least 1 token each")
    inputs.run_data(ctx, "forget")
    if _qa_source(ctx):
        ctx.qa_pairs(_qa_source(ctx))


def run(ctx) -> dict:
    """The suite on the run's forget data (and --qa or a QA-format forget set for knowledge)."""
    d, o = ctx.cfg.data, ctx.opts
    forget = ctx.samples("forget")
    out = verbatim(ctx.model, ctx.tokenizer, forget, o.prefix_tokens, o.continuation_tokens, o.batch_size)
    info = {"forget": d.forget, "prefix_tokens": o.prefix_tokens, "continuation_tokens": o.continuation_tokens}
    qa_source = _qa_source(ctx)
    if qa_source:
        pairs = ctx.qa_pairs(qa_source)
        k = knowledge(ctx.model, ctx.tokenizer, pairs, [ctx.prompt(q) for q, _ in pairs], o.max_new_tokens,
                      o.batch_size)
        out["metrics"].update(k["metrics"])
        out["examples"] += k["examples"]
        info["qa"] = qa_source
    else:
        info["knowledge"] = "skipped: the forget set is not QA and no --qa file was given"
    return {**out, "info": info}
