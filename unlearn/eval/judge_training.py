"""Train the paper's kind of judge: a BERT-style multi-label classifier of harmful text.

Input: a CSV with a text column and one 0/1 column per label (e.g. toxic, threat, insult, ...).
Output: a Hugging Face folder (problem_type multi_label_classification, id2label = the label
columns) that `unlearn.eval.judges.ClassifierJudge` loads, plus judge.json (data, labels, and the
accuracy on training rows and on held-out rows never trained on: `heldout_fraction` of the rows, a
seeded draw). Training and scoring go in batches of `batch_size`, on the GPU when there is one.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path

import torch

from unlearn import sources
from unlearn.errors import UserError
from unlearn.rows import checked


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
    rows = checked(rows, [text_column, *labels], csv_path, f"'{text_column}' and a 0/1 in each label column",
                   hint="")
    if not labels:
        raise UserError(f"judge data '{csv_path}' has no 0/1 label columns; expected e.g. toxic,threat,insult")
    try:
        y = torch.tensor([[float(str(r[c]).strip() in ("1", "True", "1.0")) for c in labels] for r in rows])
    except (TypeError, ValueError):
        raise UserError(f"judge data '{csv_path}' label columns {labels} must hold 0/1 values") from None
    return [str(r[text_column]) for r in rows], labels, y


def heldout_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train rows, held-out rows): a seeded shuffle, the last round(fraction x n) rows held out (at
    least one when fraction > 0 and n >= 2; at least one row always trains)."""
    if not 0 <= fraction < 1:
        raise UserError(f"--heldout_fraction {fraction} is out of range; expected 0 <= fraction < 1")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = min(n - 1, max(1 if fraction > 0 and n >= 2 else 0, round(fraction * n)))
    return sorted(order[:n - held]), sorted(order[n - held:])


@torch.no_grad()
def predict(model, tok, texts: list[str], batch_size: int, max_length: int, device: str) -> torch.Tensor:
    """(N, L) bool: sigmoid > 0.5 per label, `batch_size` texts per forward pass (never the whole set)."""
    model.eval()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                  return_tensors="pt").to(device)
        out.append((torch.sigmoid(model(**enc).logits.float()) > 0.5).cpu())
    return torch.cat(out) if out else torch.zeros(0, model.config.num_labels, dtype=torch.bool)


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> dict:
    """label_accuracy: share of (row, label) cells right; exact_match: share of rows with every label right;
    harmful_accuracy: share of rows whose any-label verdict (what ClassifierJudge calls harmful) is right."""
    if not len(y):
        return {"label_accuracy": None, "exact_match": None, "harmful_accuracy": None, "rows": 0}
    truth = y.bool()
    return {"label_accuracy": float((pred == truth).float().mean()),
            "exact_match": float((pred == truth).all(dim=1).float().mean()),
            "harmful_accuracy": float((pred.any(dim=1) == truth.any(dim=1)).float().mean()), "rows": len(y)}


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def summary_line(info: dict, out_dir: str) -> str:
    """What `launch/train_judge.py` prints: one line (the whole record is out_dir/judge.json)."""
    held = info["heldout"]
    heldout = (f"held-out {held['rows']} rows: label accuracy {held['label_accuracy']:.3f}" if held.get("rows")
               else "no held-out rows (accuracy unknown)")
    return (f"judge {out_dir}: {len(info['labels'])} label(s) on {info['rows']} rows, {info['epochs']} epoch(s), "
            f"final loss {info['final_loss']:.4f}, train label accuracy {info['train_label_accuracy']:.3f}, "
            f"{heldout} (details: {Path(out_dir) / 'judge.json'})")


def train_judge(csv_path: str, base: str, out_dir: str, text_column: str = "text",
                label_columns: list[str] | None = None, epochs: int = 3, lr: float = 5e-5, batch_size: int = 16,
                max_length: int = 256, seed: int = 0, heldout_fraction: float = 0.1, device: str = "") -> dict:
    """Fine-tune `base` (a sequence-classification model folder or hub id) on the CSV's training rows,
    on the GPU when there is one; returns judge.json, which holds the held-out rows' accuracy."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts, labels, y = read_labelled(csv_path, text_column, list(label_columns or []))
    train_rows, held_rows = heldout_split(len(texts), heldout_fraction, seed)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    try:
        tok = AutoTokenizer.from_pretrained(base)
        with _quiet_transformers():  # its load report lists the new head as MISSING: it is, by design
            model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=len(labels), problem_type="multi_label_classification",
                id2label=dict(enumerate(labels)), label2id={c: i for i, c in enumerate(labels)},
                ignore_mismatched_sizes=True)  # a new head: the base's own head (if any) has other labels
    except OSError as exc:
        raise UserError(f"judge base '{base}' could not be loaded ({str(exc).splitlines()[0][:160]}); "
                        "expected a model folder or a cached hub id such as bert-base-uncased") from None
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    order, rng, losses = list(train_rows), random.Random(seed), []
    for _ in range(epochs):
        model.train()
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt").to(device)
            loss = model(**enc, labels=y[idx].to(device)).loss  # BCE-with-logits over labels (multi-label)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())

    def scored(rows: list[int]) -> dict:
        return accuracy(predict(model, tok, [texts[j] for j in rows], batch_size, max_length, device), y[rows])

    train, held = scored(train_rows), scored(held_rows)
    info = {"data": str(csv_path), "base": base, "labels": labels, "text_column": text_column, "rows": len(texts),
            "epochs": epochs, "lr": lr, "device": device, "seed": seed, "heldout_fraction": heldout_fraction,
            "final_loss": sum(losses[-5:]) / max(1, len(losses[-5:])),
            "train_label_accuracy": train["label_accuracy"], "heldout": {**held, "row_numbers": held_rows},
            "heldout_note": "rows (0-based, file order) never trained on; accuracy at threshold 0.5" if held_rows
            else "no held-out rows (--heldout_fraction 0): accuracy unknown"}
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "judge.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
