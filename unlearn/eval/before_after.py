"""The before/after table printed at the end of a training run (rank 0), on the run's own data.

- forget ROUGE-L: greedy continuation of forget probes vs the true text (verbatim memorisation;
  text samples are split into a prefix and the next tokens, QA samples into prompt and answer).
- forget NLL: mean answer-token NLL on the forget set (higher = more forgotten).
- retain PPL: perplexity on the retain set (lower = more ability kept).

With run.oracle set, an `oracle` column: the same measures on a model that never saw the forget data
(the starting model's recipe without it), so a reader sees how far the run is from the goal.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from unlearn import data, losses, runs
from unlearn.config import Config
from unlearn.distributed import env_from_os
from unlearn.eval.generation import greedy
from unlearn.eval.textmetrics import rouge_l
from unlearn.model import load_for_eval
from unlearn.sets import load_sets

PREFIX_TOKENS = 32
CONTINUATION_TOKENS = 32


@dataclass(frozen=True)
class Probe:
    prompt_ids: list[int]
    target_ids: list[int]


def probes(samples: list[data.Sample], prefix: int = PREFIX_TOKENS, length: int = CONTINUATION_TOKENS) -> list[Probe]:
    """Prompt/target pairs: QA samples split at the answer, text samples at `prefix` tokens."""
    out = []
    for s in samples:
        ids, labels = s["input_ids"], s["labels"]
        first_label = next(i for i, x in enumerate(labels) if x != data.IGNORE)
        cut = first_label if first_label > 0 else prefix
        target = ids[cut:cut + length]
        if cut < len(ids) and target:
            out.append(Probe(ids[:cut], target))
    return out


def verbatim_rouge(model, tokenizer, samples: list[data.Sample]) -> float:
    """Mean ROUGE-L F1 of greedy continuations against the true continuations."""
    ps = probes(samples)
    gens = greedy(model, [p.prompt_ids for p in ps], CONTINUATION_TOKENS, tokenizer.pad_token_id)
    preds = [tokenizer.decode(g[:len(p.target_ids)], skip_special_tokens=True) for g, p in zip(gens, ps)]
    refs = [tokenizer.decode(p.target_ids, skip_special_tokens=True) for p in ps]
    scores = rouge_l(preds, refs)
    return sum(scores) / max(1, len(scores))


@torch.no_grad()
def mean_nll(model, tokenizer, samples: list[data.Sample], batch_size: int = 16) -> float:
    """Token-weighted mean NLL (nats) over the labelled tokens of `samples`."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, len(samples), batch_size):
        batch = data.to_device(data.collate(samples[i:i + batch_size], tokenizer.pad_token_id), device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        n = int((batch["labels"][:, 1:] != data.IGNORE).sum())
        total += losses.nll(logits, batch["labels"]).item() * n
        count += n
    return total / max(1, count)


def measure(model, tokenizer, forget: list[data.Sample], retain: list[data.Sample]) -> dict[str, float]:
    model.eval()
    out = {"forget_rouge_l": verbatim_rouge(model, tokenizer, forget), "forget_nll": mean_nll(model, tokenizer, forget)}
    if retain:
        out["retain_ppl"] = math.exp(min(mean_nll(model, tokenizer, retain), 50.0))
    return out


def table(before: dict[str, float], after: dict[str, float], learning: bool = False,
          oracle: dict[str, float] | None = None) -> str:
    """The before/after table; `learning` (a fine-tune: the text is being learned, not forgotten)
    labels the trained text's rows by what a fine-tune wants; `oracle` (run.oracle's measures: a model
    that never saw the forget data) adds its column, the value unlearning aims at."""
    text, good_rouge, good_nll = ("trained text", "higher = learned", "lower = learned") if learning else \
        ("forget", "lower = forgotten", "higher = forgotten")
    rows = [(f"{text} ROUGE-L (verbatim)", "forget_rouge_l", good_rouge),
            (f"{text} NLL (nats/token)", "forget_nll", good_nll),
            ("retain perplexity", "retain_ppl", "lower = ability kept")]
    lines = [f"{'metric':<30}{'before':>11} {'after':>11}  change" + (f"{'oracle':>11}" if oracle else ""),
             "-" * (77 if oracle else 66)]
    for label, key, note in rows:
        if key in before and key in after:
            b, a = before[key], after[key]
            change = f"{(a - b) / b:+.0%}" if b else ""
            far = f"{_num(oracle[key]):>11}" if oracle and key in oracle else ""
            lines.append(f"{label:<30}{_num(b):>11} {_num(a):>11}  {change:>6}{far}  ({note})")
    if oracle:
        lines.append("oracle: the starting model's recipe without the forget data (run.oracle), never taught it")
    return "\n".join(lines)


def _num(x: float) -> str:
    """3 decimals, or 4 significant digits once that would be wider than a column (never merges)."""
    return f"{x:.3f}" if abs(x) < 1e5 else f"{x:.4g}"


def final_report(cfg: Config, run_dir: Path) -> dict | None:
    env = env_from_os()
    if not env.is_main:
        return None
    done = runs.complete_checkpoints(run_dir)
    if not done:
        return None
    final = done[-1]
    before_model, tok = load_for_eval(cfg.model.name_or_path)
    sets = load_sets(cfg, tok, env)
    forget = sets.forget or sets.retain  # fine-tuning: how well the model has learnt the text
    before = measure(before_model, tok, forget, sets.retain)
    after_model, _ = load_for_eval(str(final))
    after = measure(after_model, tok, forget, sets.retain)
    oracle = measure(load_for_eval(cfg.run.oracle)[0], tok, forget, sets.retain) if cfg.run.oracle else None
    print("\n" + table(before, after, learning=not sets.forget, oracle=oracle) + "\n", flush=True)
    result = {"checkpoint": str(final), "before": before, "after": after,
              **({"oracle": {"model": cfg.run.oracle, **oracle}} if oracle else {})}
    (run_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
