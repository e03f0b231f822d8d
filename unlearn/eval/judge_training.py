"""Train the paper's kind of judge: a BERT-style multi-label classifier of harmful text.

Input: a CSV with a text column and one 0/1 column per label (e.g. toxic, threat, insult, ...).
Output: a Hugging Face folder (problem_type multi_label_classification, id2label = the label
columns) that `unlearn.eval.judges.ClassifierJudge` loads, plus judge.json (data, labels, accuracy).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from unlearn import sources
from unlearn.errors import UserError


def read_labelled(csv_path: str, text_column: str, label_columns: list[str]) -> tuple[list[str], list[str], torch.Tensor]:
    """(texts, label names, (N, L) float 0/1 targets); labels default to every 0/1 column."""
    rows = sources.load_rows(csv_path)
    if not rows:
        raise UserError(f"judge data '{csv_path}' is empty; expected labelled rows")
    if text_column not in rows[0]:
        raise UserError(f"judge data '{csv_path}' has no text column '{text_column}'; it has {sorted(rows[0])}")
    labels = label_columns or [c for c in rows[0] if c != text_column and
                               all(str(r[c]).strip() in ("0", "1", "True", "False") for r in rows)]
    sources.require_columns(rows, labels, csv_path, "judge")
    if not labels:
        raise UserError(f"judge data '{csv_path}' has no 0/1 label columns; expected e.g. toxic,threat,insult")
    try:
        y = torch.tensor([[float(str(r[c]).strip() in ("1", "True", "1.0")) for c in labels] for r in rows])
    except (TypeError, ValueError):
        raise UserError(f"judge data '{csv_path}' label columns {labels} must hold 0/1 values") from None
    return [str(r[text_column]) for r in rows], labels, y


def train_judge(csv_path: str, base: str, out_dir: str, text_column: str = "text",
                label_columns: list[str] | None = None, epochs: int = 3, lr: float = 5e-5, batch_size: int = 16,
                max_length: int = 256, seed: int = 0) -> dict:
    """Fine-tune `base` (a sequence-classification model folder or hub id) on the CSV; returns judge.json."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts, labels, y = read_labelled(csv_path, text_column, list(label_columns or []))
    torch.manual_seed(seed)
    try:
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=len(labels), problem_type="multi_label_classification",
            id2label=dict(enumerate(labels)), label2id={c: i for i, c in enumerate(labels)},
            ignore_mismatched_sizes=True)  # a new head: the base's own head (if any) has other labels
    except OSError as exc:
        raise UserError(f"judge base '{base}' could not be loaded ({str(exc).splitlines()[0][:160]}); "
                        "expected a model folder or a cached hub id such as bert-base-uncased") from None
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    order, rng, losses = list(range(len(texts))), random.Random(seed), []
    model.train()
    for _ in range(epochs):
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
            loss = model(**enc, labels=y[idx]).loss  # BCE-with-logits over labels (multi-label)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        pred = torch.sigmoid(model(**enc).logits) > 0.5
    info = {"data": str(csv_path), "base": base, "labels": labels, "text_column": text_column, "rows": len(texts),
            "epochs": epochs, "lr": lr, "final_loss": sum(losses[-5:]) / max(1, len(losses[-5:])),
            "train_label_accuracy": float((pred == y.bool()).float().mean())}
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "judge.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
