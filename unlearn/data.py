"""Forget / retain samples: loading (through `datasets`), answer-only labels, batching.

A sample is a dict of two equal-length int lists: `input_ids` and `labels`, where labels are -100
on every token that is not trained (question, template, padding). Padding is added per micro-batch
by `collate` from sequence lengths, never by token id, so a pad token equal to EOS (OPT, Llama)
cannot mask or dilute real tokens.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from unlearn.errors import UserError

IGNORE = -100
LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
PKU_COLUMNS = ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe")
Sample = dict[str, list[int]]


# ----------------------------------------------------------------------------- loading

def load_rows(source: str, split: str = "train", revision: str = "") -> list[dict[str, Any]]:
    """Rows of a local file (by extension) or a hub dataset, as plain dicts."""
    import datasets  # heavy: only when data is loaded

    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in LOCAL_BUILDERS:
        if not path.is_file():
            raise UserError(f"data file '{source}' not found; expected an existing "
                            f"{'/'.join(LOCAL_BUILDERS)} file or a hub dataset id")
        builder = LOCAL_BUILDERS[suffix]
        kwargs: dict[str, Any] = {"sample_by": "document"} if builder == "text" else {}
        if builder == "csv":
            kwargs["encoding"] = "utf-8-sig"  # TruthfulQA.csv starts with a byte-order mark
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
        return ds.to_list()
    if path.exists():
        raise UserError(f"data path '{source}' has an unsupported type; expected one of "
                        f"{', '.join(LOCAL_BUILDERS)} or a hub dataset id")
    try:
        ds = datasets.load_dataset(source, split=split, revision=revision or None)
    except Exception as exc:  # the hub client raises many types; the message is what matters
        raise UserError(f"dataset '{source}' (split '{split}') could not be loaded: "
                        f"{str(exc).splitlines()[0][:200]}") from None
    return ds.to_list()


def detect_format(rows: list[dict[str, Any]], source: str) -> str:
    if not rows:
        raise UserError(f"data '{source}' is empty; expected at least one row")
    cols = set(rows[0])
    if cols == {"text"}:
        return "text"
    if set(PKU_COLUMNS) <= cols:
        return "pku"
    if {"Question", "Best Answer"} <= cols or {"question", "best_answer"} <= cols:
        return "truthfulqa"
    if ({"question", "answer"} <= cols) or ({"prompt", "response"} <= cols):
        return "qa"
    if "text" in cols:
        return "text"
    raise UserError(f"data '{source}' has columns {sorted(cols)}; expected 'text', question/answer, "
                    f"prompt/response, TruthfulQA columns or PKU-SafeRLHF columns {list(PKU_COLUMNS)}")


def require_columns(rows: list[dict[str, Any]], columns: Sequence[str], source: str, fmt: str) -> None:
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise UserError(f"data '{source}' lacks columns {missing} needed by format '{fmt}'; "
                        f"it has {sorted(rows[0])}")


def qa_pairs(rows: list[dict[str, Any]], fmt: str, source: str) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of a QA-like table; `pku` keeps the unsafe responses only."""
    if fmt == "pku":
        require_columns(rows, PKU_COLUMNS, source, fmt)
        pairs = []
        for row in rows:  # which slot is harmful varies row by row; both may be
            for slot in (0, 1):
                if not _truthy(row[f"is_response_{slot}_safe"]) and str(row[f"response_{slot}"]).strip():
                    pairs.append((row["prompt"], row[f"response_{slot}"]))
        if not pairs:
            raise UserError(f"harmful data '{source}' has no unsafe responses "
                            "(every is_response_*_safe is true); expected some unsafe answers to forget")
        return pairs
    if fmt == "truthfulqa":
        q, a = ("Question", "Best Answer") if "Question" in rows[0] else ("question", "best_answer")
        return [(r[q], r[a]) for r in rows if str(r[a]).strip()]
    if fmt == "qa":
        q, a = ("question", "answer") if "question" in rows[0] else ("prompt", "response")
        require_columns(rows, (q, a), source, fmt)
        return [(r[q], r[a]) for r in rows if str(r[a]).strip()]
    raise UserError(f"format '{fmt}' is not a QA format; expected pku, truthfulqa or qa")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


# ----------------------------------------------------------------------------- tokenising

def text_samples(texts: list[str], tokenizer, max_length: int) -> list[Sample]:
    """Concatenate documents (EOS between them) and cut into `max_length`-token blocks."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
    blocks = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    blocks = [b for b in blocks if len(b) > 1]  # a 1-token block has nothing to predict
    return [{"input_ids": b, "labels": list(b)} for b in blocks]


def qa_sample(prompt: str, answer: str, tokenizer, template: str, max_length: int) -> Sample:
    """Template-formatted sample whose labels cover the answer (and a closing EOS) only."""
    head, _, tail = template.partition("{response}")
    prompt_ids = tokenizer(head.format(prompt=prompt), add_special_tokens=True)["input_ids"]
    answer_ids = tokenizer(answer + tail.format(prompt=prompt), add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": ids, "labels": labels}


def build_samples(source: str, fmt: str, tokenizer, cfg_data, split: str, limit: int = 0) -> list[Sample]:
    """Samples of one data source, in file order."""
    rows = load_rows(source, split, cfg_data.revision)
    fmt = detect_format(rows, source) if fmt == "auto" else fmt
    if fmt == "text":
        require_columns(rows, ("text",), source, fmt)
        samples = text_samples([r["text"] for r in rows if str(r["text"]).strip()], tokenizer,
                               cfg_data.max_length)
    elif fmt in ("pku", "qa", "truthfulqa"):
        samples = [qa_sample(p, a, tokenizer, cfg_data.prompt_template, cfg_data.max_length)
                   for p, a in qa_pairs(rows, fmt, source)]
    else:
        raise UserError(f"data format '{fmt}' is unknown; expected auto, text, qa, pku or truthfulqa")
    if limit:
        samples = samples[:limit]
    samples = [s for s in samples if any(x != IGNORE for x in s["labels"][1:])]
    if not samples:
        raise UserError(f"data '{source}' yields no trainable samples; expected non-empty answers/text")
    return samples


# ----------------------------------------------------------------------------- batching

def collate(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample; padding gets attention 0 and label -100 by position."""
    width = max(len(s["input_ids"]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s["input_ids"])
        ids[i, :n] = torch.tensor(s["input_ids"])
        labels[i, :n] = torch.tensor(s["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@dataclass
class BatchStream:
    """Endless, resumable order over a sample list: epoch e is permutation(seed + e).

    Global batch b is items [b*G, (b+1)*G) of the concatenated epochs, so the position in the data
    is one integer (`next_batch`), and rank r's micro-batch k of it is the (k*world + r)-th slice:
    the same samples meet the same micro-batches whatever the world size.
    """

    size: int
    global_batch: int
    seed: int
    shuffle: bool = True
    next_batch: int = 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        if self.shuffle:
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def global_indices(self, batch: int) -> list[int]:
        start = batch * self.global_batch
        out: list[int] = []
        while len(out) < self.global_batch:
            epoch, offset = divmod(start + len(out), self.size)
            take = min(self.size - offset, self.global_batch - len(out))
            out += self._order(epoch)[offset:offset + take]
        return out

    def take(self, micro_batch: int, rank: int, world: int) -> list[list[int]]:
        """This rank's micro-batches (index lists) of the next global batch; advances the stream."""
        idx = self.global_indices(self.next_batch)
        self.next_batch += 1
        n_micro = len(idx) // micro_batch
        slices = [idx[j * micro_batch:(j + 1) * micro_batch] for j in range(n_micro)]
        return [slices[k * world + rank] for k in range(n_micro // world)]

    @property
    def epoch(self) -> float:
        return self.next_batch * self.global_batch / self.size


def steps_for_epochs(epochs: float, n_samples: int, global_batch: int) -> int:
    return max(1, math.ceil(epochs * n_samples / global_batch))


# ----------------------------------------------------------------------------- random mismatch

def answer_pool(rows: list[dict[str, Any]], fmt: str, source: str) -> list[str]:
    """Normal answers to draw from; TruthfulQA adds its correct and incorrect answers (';'-split)."""
    if fmt == "truthfulqa":
        cols = [c for c in ("Best Answer", "Correct Answers", "Incorrect Answers",
                            "best_answer", "correct_answers", "incorrect_answers") if c in rows[0]]
        pool = []
        for row in rows:
            for col in cols:
                value = row[col]
                items = value if isinstance(value, list) else str(value).split(";")
                pool += [a.strip() for a in items if str(a).strip()]
        return pool
    return [a for _, a in qa_pairs(rows, fmt, source)]


def mismatch_samples(cfg, tokenizer, forget_source: str, retain_source: str) -> list[Sample]:
    """Each forget prompt paired with `num_random_answers` random normal answers (answer-only labels)."""
    d = cfg.data
    f_rows = load_rows(forget_source, d.forget_split, d.revision)
    f_fmt = detect_format(f_rows, forget_source) if d.forget_format == "auto" else d.forget_format
    if f_fmt == "text":
        raise UserError(f"method.mismatch_weight>0 needs prompts, but data.forget '{forget_source}' is plain "
                        "text; expected a QA or PKU-SafeRLHF forget set (or mismatch_weight=0)")
    prompts = sorted({p for p, _ in qa_pairs(f_rows, f_fmt, forget_source)})
    r_rows = load_rows(retain_source, d.retain_split, d.revision)
    r_fmt = detect_format(r_rows, retain_source) if d.retain_format == "auto" else d.retain_format
    if r_fmt == "text":
        raise UserError(f"method.mismatch_weight>0 draws random answers from data.retain, but "
                        f"'{retain_source}' is plain text; expected a QA or TruthfulQA retain set")
    pool = answer_pool(r_rows, r_fmt, retain_source)
    rng = random.Random(cfg.train.seed + 7)
    return [qa_sample(p, rng.choice(pool), tokenizer, d.prompt_template, d.max_length)
            for p in prompts for _ in range(d.num_random_answers)]
