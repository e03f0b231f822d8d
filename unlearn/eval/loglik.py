"""Log-likelihood of a continuation given a context, as lm-evaluation-harness scores multiple choice.

Reference: lm-evaluation-harness (EleutherAI), lm_eval/api/model.py `TemplateLM._encode_pair` and
`TemplateLM.loglikelihood`, lm_eval/models/huggingface.py `HFLM.tok_encode`, `HFLM.prefix_token_id` and
`HFLM._loglikelihood_tokens`, for a causal LM with the harness's default `add_bos_token`:
- whitespace at the end of the context moves to the start of the continuation;
- the continuation's tokens are those of encode(context + continuation) after the first
  len(encode(context)) tokens, so BPE merges across the boundary are those of the whole text;
- special tokens, by `bos` (the `--loglik_bos` option, written into eval.json with the version it matches):
  `tokenizer` (default; the harness from v0.4.9.2, PR #3347, which made `add_bos_token` default to None):
  encode() adds what the tokenizer adds by itself, so the BOS of Llama (`<s>`), OPT (`</s>`) or Gemma
  lands at the start of the context, and nothing is added for a tokenizer without one (GPT-2, Pythia,
  Qwen); a text that already starts with the prefix token's string gets none added.
  `none` (the harness up to v0.4.9.1, `add_special_tokens=False`): no special tokens, except for
  Gemma models, which that harness always gave a BOS;
- an empty context is the prefix token (the tokenizer's BOS, else its EOS) and the continuation is
  encoded without special tokens; under `tokenizer`, a continuation that itself starts with the prefix
  token uses that token as the context instead of doubling it;
- a sequence longer than the model's window is cut from the left (window + 1 tokens, last dropped);
- the score is the sum of log p(token | everything before it) over the continuation's tokens (nats).
"""

from __future__ import annotations

import torch

from unlearn.errors import UserError

BOS_RULES = {
    "tokenizer": "the tokenizer's own special tokens (a BOS goes at the start of the context), as "
                 "lm-evaluation-harness >= 0.4.9.2 (PR #3347, add_bos_token=None)",
    "none": "no special tokens (a BOS for Gemma models only), as lm-evaluation-harness <= 0.4.9.1",
}
"""--loglik_bos: which harness rule places special tokens, and the versions that follow it."""


def check_bos(rule: str) -> None:
    if rule not in BOS_RULES:
        raise UserError(f"--loglik_bos '{rule}' is unknown; expected one of {', '.join(BOS_RULES)}")


def prefix_token_id(tokenizer) -> int:
    """The harness's prefix token (an empty context): the tokenizer's BOS, else its EOS."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str, bos: str = "tokenizer",
                model_type: str = "") -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness splits them under rule `bos`;
    `model_type` is the model config's (the old rule gave Gemma models a BOS)."""
    prefix_id = prefix_token_id(tokenizer)
    special = bos == "tokenizer" or "gemma" in model_type  # whether encode() adds the tokenizer's tokens
    if not context:
        if bos != "tokenizer":
            return [prefix_id], tokenizer(continuation, add_special_tokens=special)["input_ids"]
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        return (cont[:1], cont[1:]) if cont and cont[0] == prefix_id else ([prefix_id], cont)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    # under the current rule a text that already starts with the prefix token's string gets no more
    prefix = tokenizer.decode(prefix_id) if bos == "tokenizer" else ""

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=special and not (prefix and text.startswith(prefix)))["input_ids"]

    whole, ctx = encode(context + continuation), encode(context)
    return ctx, whole[len(ctx):]


def _window(ctx: list[int], cont: list[int], window: int | None) -> tuple[list[int], list[int]]:
    """(model input, targets) of one request: the harness feeds (ctx + cont)[-(window + 1):][:-1]."""
    full = ctx + cont
    if window:
        full = full[-(window + 1):]
    return full[:-1], full[1:]


@torch.no_grad()
def loglikelihoods(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16,
                   desc: str | None = None, bos: str = "tokenizer") -> list[float]:
    """Summed log p(continuation | context) per (context, continuation) pair, in nats."""
    from unlearn.eval.generation import _progress

    check_bos(bos)
    config = getattr(model, "config", None)
    window = getattr(config, "max_position_embeddings", None)
    model_type = str(getattr(config, "model_type", ""))
    device = next(model.parameters()).device
    reqs = [encode_pair(tokenizer, c, x, bos, model_type) for c, x in pairs]
    # longest first, so batches hold sequences of similar length (the harness sorts the same way)
    order = sorted(range(len(reqs)), key=lambda i: -len(reqs[i][0]) - len(reqs[i][1]))
    out = [0.0] * len(reqs)
    bar = _progress(len(reqs), desc)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        rows = [_window(*reqs[i], window) for i in idx]
        width = max(len(inp) for inp, _ in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, (inp, _) in enumerate(rows):  # right padding: real tokens keep positions 0..n-1
            ids[j, :len(inp)] = torch.tensor(inp)
            mask[j, :len(inp)] = 1
        logp = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        for j, (i, (inp, target)) in enumerate(zip(idx, rows)):
            n = len(reqs[i][1])  # the continuation's tokens are the last n targets
            pos = torch.arange(len(inp) - n, len(inp), device=device)
            out[i] = float(logp[j, pos, torch.tensor(target[-n:], device=device)].sum())
        bar.update(len(idx))
    bar.close()
    return out
