"""MUSE suite: knowledge and verbatim memorisation as MUSE measures them.

Reference: Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models";
swj0419/muse_bench eval.py, metrics/knowmem.py, metrics/verbmem.py and metrics/logger.py (earlier:
jaechan-repo/muse_bench knowmem/get_rouge_qa.py, verbmem/get_rouge.py and
knowmem/scripts/get_best_forget_quality.py); open-unlearning configs/eval/muse_metrics/
{forget,retain}_knowmem_ROUGE.yaml and forget_verbmem_ROUGE.yaml (rouge_type rougeL_f1).
- KnowMem (forget and retain QA): the prompt is, for each in-context example,
  "Question: {q}\\nAnswer: {a}\\n\\n", then "Question: {question}\\nAnswer: " (trailing space kept);
  tokenised with special tokens; greedy, 32 new tokens; the decoded output is cut before the first
  "\\n\\n", "\\nQuestion" or "Question:"; score = ROUGE-L F1 against the answer, averaged (MUSE's
  `mean_rougeL`). MUSE prints x100; values here are in [0, 1].
- VerbMem (forget): the data's prompt (MUSE's verbmem rows hold the text before a cut: median 4,012
  characters on News, 3,661 on Books, i.e. about a thousand Llama tokens), greedy 128 new tokens,
  ROUGE-L F1 (same convention) against the true continuation cut to its first 128 tokens. On a plain
  text corpus (the run's forget documents, no MUSE rows) the documents are cut into windows of
  --prefix_tokens + 128 tokens: the first --prefix_tokens are the prompt, the next 128 the reference.
- ROUGE convention: MUSE's code scores words as they are (metrics/logger.py, RougeScorer with
  use_stemmer=False); open-unlearning's rouge handler (src/evals/metrics/utils.py) Porter-stems them, so
  "cats" meets "cat" and its KnowMem/VerbMem are never lower, often higher. The default is MUSE's, because
  this suite exists to sit beside MUSE's published table; `--muse_stemmer` gives open-unlearning's.
  eval.json's info (`rouge`) names the one used.
- PrivLeak: the privacy suite (unlearn.eval.privacy), as MUSE computes it.
- MUSE's checkpoint rule (the first checkpoint whose forget KnowMem is at or below the retained
  model's): `launch/sweep.py --best RUN --rule muse forget_target_from=RETAINED/eval.json`
  (unlearn.sweep.select, rule threshold on muse/knowmem_forget).
Data: `--muse` names the hub dataset (muse-bench/MUSE-News or muse-bench/MUSE-Books: configs knowmem
with splits forget_qa, forget_qa_icl, retain_qa, retain_qa_icl, and verbmem with split forget; fields
question/answer and prompt/gt) or a folder in the same layout (knowmem/forget_qa.json, ...). Without
it: KnowMem forget on --qa or a QA forget set, KnowMem retain on a QA retain set, VerbMem on the
run's forget text; no in-context examples.
"""

from __future__ import annotations

from pathlib import Path

from unlearn import sources, textfiles
from unlearn.errors import UserError
from unlearn.eval import before_after, inputs
from unlearn.eval.context import role_format
from unlearn.eval.generation import greedy
from unlearn.eval.stats import mean_ci
from unlearn.eval.textmetrics import rouge_l
from unlearn.rows import checked

KNOWMEM_NEW_TOKENS = 32
VERBMEM_NEW_TOKENS = 128
STOPS = ("\n\n", "\nQuestion", "Question:")
EXAMPLES = 2


def knowmem_prompt(question: str, shots: list[tuple[str, str]]) -> str:
    """MUSE's few-shot QA prompt."""
    head = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots)
    return head + f"Question: {question}\nAnswer: "


def cut_at_stops(text: str) -> str:
    """The output before the first stop string (MUSE's get_prefix_before_words_occur)."""
    for stop in STOPS:
        text = text.split(stop)[0]
    return text


def _generate(model, tokenizer, prompts: list[str], new_tokens: int, batch_size: int, desc: str) -> list[str]:
    ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    gens = greedy(model, ids, new_tokens, tokenizer.pad_token_id, batch_size, eos_id=tokenizer.eos_token_id,
                  desc=desc)
    return [tokenizer.decode(g, skip_special_tokens=True, clean_up_tokenization_spaces=True) for g in gens]


ROUGE = {False: "ROUGE-L F1, words unstemmed (MUSE's muse_bench, metrics/logger.py)",
         True: "ROUGE-L F1, words Porter-stemmed (open-unlearning's rouge handler)"}
"""--muse_stemmer: the convention of every MUSE number, as eval.json names it."""


def knowmem(model, tokenizer, pairs: list[tuple[str, str]], shots: list[tuple[str, str]],
            batch_size: int = 16, desc: str = "knowmem", stemmer: bool = False) -> dict:
    """{"metric": mean ROUGE-L F1, "examples"} of greedy answers to `pairs` under `shots`."""
    prompts = [knowmem_prompt(q, shots) for q, _ in pairs]
    outputs = [cut_at_stops(o) for o in _generate(model, tokenizer, prompts, KNOWMEM_NEW_TOKENS, batch_size, desc)]
    scores = rouge_l(outputs, [a for _, a in pairs], stemmer=stemmer)
    return {"metric": mean_ci(scores), "examples": [{"question": q, "answer": a, "generation": o}
                                                    for (q, a), o in list(zip(pairs, outputs))[:EXAMPLES]]}


def verbmem(model, tokenizer, rows: list[tuple[str, str]], batch_size: int = 16, stemmer: bool = False) -> dict:
    """Mean ROUGE-L F1 of greedy 128-token continuations of (prompt, gt) rows against gt's first 128 tokens."""
    refs = [tokenizer.decode(tokenizer(gt, add_special_tokens=True)["input_ids"][:VERBMEM_NEW_TOKENS],
                             skip_special_tokens=True, clean_up_tokenization_spaces=True) for _, gt in rows]
    outputs = _generate(model, tokenizer, [p for p, _ in rows], VERBMEM_NEW_TOKENS, batch_size, "verbmem")
    return {"metric": mean_ci(rouge_l(outputs, refs, stemmer=stemmer)),
            "examples": [{"prompt": p[-200:], "reference": r, "generation": o}
                         for (p, _), r, o in list(zip(rows, refs, outputs))[:EXAMPLES]]}


def passages(texts: list[str], tokenizer, prefix_tokens: int) -> list[tuple[str, str]]:
    """(prompt, gt) rows from plain documents: consecutive windows of `prefix_tokens` + 128 tokens, the
    first `prefix_tokens` the prompt and the next 128 the true continuation (a last, shorter window
    is dropped, so every reference is as long as the generation)."""
    rows, width = [], prefix_tokens + VERBMEM_NEW_TOKENS
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids) - width + 1, width):
            rows.append((tokenizer.decode(ids[start:start + prefix_tokens]),
                         tokenizer.decode(ids[start + prefix_tokens:start + width])))
    return rows


def _muse_rows(source: str, config: str, split: str) -> list[dict] | None:
    """Rows of one MUSE config/split: a hub id, or a folder in its layout (None when the file is absent)."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / config / f"{split}.json"  # MUSE's own files: one JSON list each (may be empty)
        if not path.is_file():
            return None
        rows = textfiles.read_json(path, "MUSE file")
        if not isinstance(rows, list):
            raise UserError(f"MUSE file '{path}' is not a JSON list; expected [{{...}}, ...] as muse_bench's data/")
        return rows
    return sources.load_rows(source, split, "", config)


def _pairs(rows: list[dict] | None, source: str, skip: bool) -> list[tuple[str, str]]:
    if not rows:
        return []
    sources.require_columns(rows, ("question", "answer"), source, "MUSE knowmem")
    rows = checked(rows, ("question", "answer"), source, "'question' and 'answer' (MUSE knowmem)", skip)
    return [(str(r["question"]), str(r["answer"])) for r in rows]


def _muse_data(ctx) -> dict:
    """_data's sets from --muse (a hub id or a folder in MUSE's layout)."""
    o = ctx.opts
    skip = ctx.cfg.data.skip_bad_rows
    out = {key: _pairs(_muse_rows(o.muse, "knowmem", split), o.muse, skip) for key, split in
           (("forget_qa", "forget_qa"), ("forget_icl", "forget_qa_icl"), ("retain_qa", "retain_qa"),
            ("retain_icl", "retain_qa_icl"))}
    rows = _muse_rows(o.muse, "verbmem", "forget")
    if rows:
        sources.require_columns(rows, ("prompt", "gt"), o.muse, "MUSE verbmem")
        rows = checked(rows, ("prompt", "gt"), o.muse, "'prompt' and 'gt' (MUSE verbmem)", skip)
    out["verbmem"] = [(str(r["prompt"]), str(r["gt"])) for r in rows or []]
    return {**out, "from": o.muse}


def _own_qa(ctx) -> tuple[str, str]:
    """Without --muse, KnowMem's (forget, retain) QA files: --qa or a QA forget set, a QA retain set ("": none)."""
    d = ctx.cfg.data
    forget_qa = ctx.opts.qa or (d.forget.split(",")[0] if role_format(ctx.cfg, "forget") == "qa" else "")
    return forget_qa, d.retain.split(",")[0] if role_format(ctx.cfg, "retain") == "qa" else ""


def check(ctx) -> None:
    """The inputs `run` reads, without the model: --muse's sets, else the run's data and QA files."""
    if ctx.opts.muse:
        if not any(_muse_data(ctx)[k] for k in ("forget_qa", "retain_qa", "verbmem")):
            raise UserError(f"muse suite: --muse '{ctx.opts.muse}' holds no knowmem or verbmem rows; expected MUSE's "
                            "layout (knowmem/forget_qa.json, ..., verbmem/forget.json) or its hub id")
        return
    inputs.run_data(ctx, "forget")
    for source in _own_qa(ctx):
        if source:
            ctx.qa_pairs(source)


def _data(ctx) -> dict:
    """{"forget_qa", "forget_icl", "retain_qa", "retain_icl", "verbmem"} and where each came from."""
    o = ctx.opts
    if o.muse:
        return _muse_data(ctx)
    d = ctx.cfg.data
    forget_qa, retain_qa = _own_qa(ctx)
    tok = ctx.tokenizer
    if role_format(ctx.cfg, "forget") == "text":  # whole documents, not the run's training chunks
        texts = [t for src in d.forget.split(",") if src.strip() for t in sources.texts_of(
            sources.load_rows(src.strip(), d.forget_split, d.forget_revision, d.forget_subset), src, "text",
            d.skip_bad_rows)]
        verb = passages(texts, tok, o.prefix_tokens)
    else:  # QA forget sets: the question is the prompt, the answer the continuation
        probes = before_after.probes(ctx.samples("forget"), prefix=o.prefix_tokens, length=VERBMEM_NEW_TOKENS)
        verb = [(tok.decode(p.prompt_ids, skip_special_tokens=True), tok.decode(p.target_ids,
                 skip_special_tokens=True)) for p in probes]
    return {"forget_qa": ctx.qa_pairs(forget_qa) if forget_qa else [], "forget_icl": [],
            "retain_qa": ctx.qa_pairs(retain_qa) if retain_qa else [], "retain_icl": [], "verbmem": verb,
            "from": f"the run's data (knowmem forget: {forget_qa or 'none'}, retain: {retain_qa or 'none'})"}


def run(ctx) -> dict:
    o = ctx.opts
    data = _data(ctx)
    metrics, info, examples = {}, {"data": data["from"], "knowmem_new_tokens": KNOWMEM_NEW_TOKENS,
                                   "verbmem_new_tokens": VERBMEM_NEW_TOKENS, "rouge": ROUGE[o.muse_stemmer]}, []
    for side in ("forget", "retain"):
        pairs = ctx.limited(data[f"{side}_qa"])
        if not pairs:
            info[f"knowmem_{side}"] = f"skipped: no {side} QA (--muse, or a QA {side} set / --qa)"
            continue
        res = knowmem(ctx.model, ctx.tokenizer, pairs, data[f"{side}_icl"], o.batch_size, f"knowmem ({side})",
                      o.muse_stemmer)
        metrics[f"knowmem_{side}"] = res["metric"]
        info[f"knowmem_{side}_shots"] = len(data[f"{side}_icl"])
        examples += res["examples"]
    rows = ctx.limited(data["verbmem"])
    if rows:
        res = verbmem(ctx.model, ctx.tokenizer, rows, o.batch_size, o.muse_stemmer)
        metrics["verbmem_forget"] = res["metric"]
        examples += res["examples"]
    else:
        info["verbmem_forget"] = "skipped: no verbmem rows"
    if not metrics:
        raise UserError("muse suite found nothing to score; expected --muse HUB_ID_OR_FOLDER, --qa FILE or a "
                        "run whose forget set is text or QA")
    return {"metrics": metrics, "info": info, "examples": examples}
