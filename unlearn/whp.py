"""WHP, "Who's Harry Potter? Approximate Unlearning in LLMs" (Eldan & Russinovich 2023): generic targets.

A reinforced model is the model fine-tuned further on the forget set (method.whp_reinforced; e.g.
launch/finetune.py with data.retain = the forget set). Where it raises a token's logit above the run's
model (the base), that token is what the forget text teaches; the generic logits

    v_generic = v_base - alpha ReLU(v_reinforced - v_base)          (alpha = method.whp_alpha)

push exactly those tokens down (MUSE's WHPModelForCausalLM, baselines/baselines/whos_harry_potter.py,
alpha 1 by default). The paper then fine-tunes the base on the generic predictions: each forget sample
keeps its text and gets, at every position that predicts a forget token (teacher forcing on the original
text), the label argmax_v v_generic. `write_targets` computes these once into data.whp_targets; the run's
forget loss `whp` is their NLL (unlearn.methods.whp; unlearn.alternates reads the file and checks it
was made from the run's model, reinforced model and alpha).

Where this differs: MUSE stops at the combined logits (an inference-time model, two models per forward);
the paper also swaps idiosyncratic terms for generic anchors before taking the base's predictions (it
needs a term dictionary written by another LLM), which is not done here.

The file (JSON): {"model", "reinforced", "alpha", "samples": [{"input_ids", "labels"}, ...]}, one sample per
forget sample in data order; labels -100 where the forget sample has none.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from unlearn.errors import UserError

IGNORE = -100


def generic_labels(base_logits: torch.Tensor, reinforced_logits: torch.Tensor, labels: torch.Tensor,
                   alpha: float) -> torch.Tensor:
    """`labels` (B, T) with each label replaced by argmax_v of v_generic at the position predicting it
    (position t predicts labels[t+1]); logits (B, T, V)."""
    v_b, v_r = base_logits[:, :-1].float(), reinforced_logits[:, :-1].float()
    generic = (v_b - alpha * F.relu(v_r - v_b)).argmax(-1)             # (B, T-1)
    out = labels.clone()
    answer = labels[:, 1:] != IGNORE
    out[:, 1:][answer] = generic[answer]
    return out


def write_targets(cfg, batch_size: int = 16, say=print) -> Path:
    """Compute the generic labels of cfg's forget samples with cfg's model (base) and method.whp_reinforced,
    and write them to data.whp_targets (whole, then renamed into place)."""
    from unlearn import data, sets
    from unlearn import model as models

    m, d = cfg.method, cfg.data
    if not m.whp_reinforced or not d.whp_targets:
        raise UserError("launch/whp_targets.py needs method.whp_reinforced (the model fine-tuned on the forget set) "
                        "and data.whp_targets (the file to write); expected both set")
    models.require_local_exists("method.whp_reinforced", m.whp_reinforced)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base, tok = models.load_for_eval(cfg.model.name_or_path, dtype, device)
    reinforced, _ = models.load_for_eval(m.whp_reinforced, dtype, device)
    samples = sets.forget_samples(cfg, tok)
    out = []
    with torch.no_grad():
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            batch = data.to_device(data.collate(chunk, tok.pad_token_id), device)
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            labels = generic_labels(base(**inputs).logits, reinforced(**inputs).logits, batch["labels"], m.whp_alpha)
            for s, row in zip(chunk, labels.tolist()):
                out.append({"input_ids": s["input_ids"], "labels": row[:len(s["input_ids"])]})
    path = Path(d.whp_targets)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"model": cfg.model.name_or_path, "reinforced": m.whp_reinforced, "alpha": m.whp_alpha,
                               "samples": out}) + "\n")
    tmp.replace(path)
    changed = sum(a != b for s, o in zip(samples, out) for a, b in zip(s["labels"][1:], o["labels"][1:]) if a != IGNORE)
    total = sum(y != IGNORE for s in samples for y in s["labels"][1:])
    say(f"generic labels for {len(out)} forget samples -> {path} ({changed}/{total} labels differ from the text)")
    return path
