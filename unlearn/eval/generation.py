"""Batched greedy generation with the KV cache, and per-token log-probabilities of given text.

The one implementation of decoding in the project: the end-of-run summary and every eval suite
call `greedy`. Prompts are left-padded so that every row's last real token sits in the same
column and the new tokens start together; only the new tokens are returned (the prompt is
stripped by position, never by string matching).
"""

from __future__ import annotations

import torch

from unlearn import data
from unlearn.errors import UserError


def load_judge_model(auto_class, name: str, shown: str, expected: str, device: str):
    """(tokenizer, model in eval mode on `device`) of a judge; a load failure is one UserError line."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name), auto_class.from_pretrained(name).to(device).eval()
    except Exception as exc:  # OSError, ValueError...: all mean "cannot load this judge"
        raise UserError(f"judge '{shown}' could not be loaded ({str(exc).strip().splitlines()[0][:160]}); "
                        f"expected {expected}") from None


def _progress(total: int, desc: str | None):
    from tqdm.auto import tqdm  # progress bar on stderr; disabled when no description is given

    return tqdm(total=total, desc=desc, disable=desc is None, leave=False, unit="seq")


@torch.no_grad()
def greedy(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int, batch_size: int = 16,
           eos_id: int | None = None, desc: str | None = None) -> list[list[int]]:
    """Greedy continuations (new token ids only, cut after the first EOS when `eos_id` is given)."""
    device = next(model.parameters()).device
    # longest first: rows of similar length share a batch, so little compute goes to padding
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outs: dict[int, list[int]] = {}
    bar = _progress(len(prompts), desc)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        chunk = [prompts[i] for i in idx]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for j, p in enumerate(chunk):
            ids[j, width - len(p):] = torch.tensor(p)
            mask[j, width - len(p):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, min_new_tokens=0, pad_token_id=pad_id,
                             eos_token_id=eos_id, use_cache=True, num_beams=1)
        for i, row in zip(idx, gen.cpu()):
            new = row[width:].tolist()
            if eos_id is not None and eos_id in new:
                new = new[:new.index(eos_id)]
            outs[i] = new
        bar.update(len(chunk))
    bar.close()
    return [outs[i] for i in range(len(prompts))]


def generate_text(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
                  desc: str | None = None) -> list[str]:
    """Greedy responses to text prompts, decoded without the prompt and without special tokens."""
    ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    gens = greedy(model, ids, max_new_tokens, tokenizer.pad_token_id, batch_size,
                  eos_id=tokenizer.eos_token_id, desc=desc)
    return [tokenizer.decode(g, skip_special_tokens=True) for g in gens]


@torch.no_grad()
def token_logprobs(model, samples: list[data.Sample], pad_id: int, batch_size: int = 16,
                   desc: str | None = None) -> list[torch.Tensor]:
    """Per sample, log p(token | prefix) of each labelled token (1-D float tensors, nats)."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    bar = _progress(len(samples), desc)
    for start in range(0, len(samples), batch_size):
        batch = data.collate(samples[start:start + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)            # (B, T-1, V): predicts token t+1
        target = batch["labels"][:, 1:].to(device)                   # (B, T-1)
        keep = target != data.IGNORE
        picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        out += [picked[i][keep[i]].cpu() for i in range(picked.shape[0])]
        bar.update(picked.shape[0])
    bar.close()
    return out
