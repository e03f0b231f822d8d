"""Log-likelihood of a continuation given a context, as lm-evaluation-harness scores multiple choice.

Reference: lm-evaluation-harness (EleutherAI), lm_eval/models/huggingface.py, `HFLM._encode_pair`
and `HFLM._loglikelihood_tokens`, with its default for causal LMs of no special tokens:
- whitespace at the end of the context moves to the start of the continuation;
- the continuation's tokens are those of encode(context + continuation) after the first
  len(encode(context)) tokens, so BPE merges across the boundary are those of the whole text;
- nothing is prepended (no BOS); an empty context is the EOS token, as the harness does;
- a sequence longer than the model's window is cut from the left (window + 1 tokens, last dropped);
- the score is the sum of log p(token | everything before it) over the continuation's tokens (nats).
"""

from __future__ import annotations

import torch


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness splits them."""
    if not context:
        return [tokenizer.eos_token_id], tokenizer(continuation, add_special_tokens=False)["input_ids"]
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


def _window(ctx: list[int], cont: list[int], window: int | None) -> tuple[list[int], list[int]]:
    """(model input, targets) of one request: the harness feeds (ctx + cont)[-(window + 1):][:-1]."""
    full = ctx + cont
    if window:
        full = full[-(window + 1):]
    return full[:-1], full[1:]


@torch.no_grad()
def loglikelihoods(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16,
                   desc: str | None = None) -> list[float]:
    """Summed log p(continuation | context) per (context, continuation) pair, in nats."""
    from unlearn.eval.generation import _progress

    window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    device = next(model.parameters()).device
    reqs = [encode_pair(tokenizer, c, x) for c, x in pairs]
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
