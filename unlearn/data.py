"""Forget / retain samples: tokenising with answer-only labels, batching, random-mismatch samples.

A sample is a dict with two equal-length int lists, `input_ids` and `labels` (-100 on every token
that is not trained: question, template, padding), and for QA-like formats the `prompt` text it
came from. Padding is added per micro-batch by `collate` from sequence lengths, never by token id,
so a pad token equal to EOS (OPT's tokenizers, Llama) cannot mask or dilute real tokens. Rows and
formats come from `unlearn.sources`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from unlearn import sources
from unlearn.errors import UserError

IGNORE = -100
Sample = dict[str, Any]


# ----------------------------------------------------------------------------- tokenising

def text_samples(texts: list[str], tokenizer, max_length: int) -> list[Sample]:
    """Concatenate documents (EOS between them) and cut into `max_length`-token blocks."""
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
    blocks = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    blocks = [b for b in blocks if len(b) > 1]  # a 1-token block has nothing to predict
    return [{"input_ids": b, "labels": list(b)} for b in blocks]


def check_template(template: str) -> None:
    if template.count("{prompt}") != 1 or template.count("{response}") != 1 or \
            template.index("{prompt}") > template.index("{response}"):
        raise UserError(f"data.prompt_template {template!r} must contain {{prompt}} once and then "
                        "{response} once, e.g. '### Question: {prompt}\\n ### Answer: {response}'")


def qa_sample(prompt: str, answer: str, tokenizer, template: str, max_length: int,
              append_eos: bool = True) -> Sample:
    """Template-formatted sample whose labels cover the answer (and a closing EOS) only.

    The template's whitespace before `{response}` goes with the answer ("Answer:" + " Paris"), so
    the two halves tokenise as the whole text does with byte-level BPE.
    """
    head, _, tail = template.partition("{response}")
    head = head.replace("{prompt}", prompt)
    cut = len(head.rstrip())
    prompt_ids = tokenizer(head[:cut], add_special_tokens=True)["input_ids"]
    answer_text = head[cut:] + answer + tail.replace("{prompt}", prompt)
    answer_ids = tokenizer(answer_text, add_special_tokens=False)["input_ids"]
    if append_eos:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + answer_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_length]
    return {"input_ids": ids, "labels": labels, "prompt": prompt}


def read(source: str, role: str, d) -> tuple[list[sources.Row], str]:
    """(rows, format) of one `role` ("forget" | "retain") source, TruthfulQA cut to its part."""
    fmt = getattr(d, f"{role}_format")
    if fmt not in sources.FORMATS:
        raise UserError(f"data.{role}_format '{fmt}' is unknown; expected one of {', '.join(sources.FORMATS)}")
    rows = sources.load_rows(source, getattr(d, f"{role}_split"), getattr(d, f"{role}_revision"),
                             getattr(d, f"{role}_subset"))
    fmt = sources.detect_format(rows, source) if fmt == "auto" else fmt
    if fmt == "truthfulqa":
        rows = sources.truthfulqa_part(rows, d.truthfulqa_part, d.truthfulqa_fractions, d.truthfulqa_seed, source,
                                       d.skip_bad_rows)
    return rows, fmt


def prompt_pairs(rows: list[sources.Row], fmt: str, source: str, skip: bool = False) -> list[tuple[str, str]]:
    """(prompt, answer) texts of a QA-like format's rows (sentences: each sentence and the next); a row
    without them is an error (`skip`: left out)."""
    if fmt == "sentences":
        return sources.sentence_pairs(sources.texts_of(rows, source, fmt, skip))
    return sources.qa_pairs(rows, fmt, source, skip)


def build_samples(source: str, role: str, tokenizer, d) -> list[Sample]:
    """Trainable samples of one source, in file order."""
    rows, fmt = read(source, role, d)
    if fmt == "text":
        samples = text_samples(sources.texts_of(rows, source, fmt, d.skip_bad_rows), tokenizer, d.max_length)
    else:
        check_template(d.prompt_template)
        samples = [qa_sample(p, a, tokenizer, d.prompt_template, d.max_length, d.append_eos)
                   for p, a in prompt_pairs(rows, fmt, source, d.skip_bad_rows)]
    samples = [s for s in samples if any(x != IGNORE for x in s["labels"][1:])]
    if not samples:
        raise UserError(f"data '{source}' yields no trainable samples; expected non-empty answers/text "
                        f"shorter than data.max_length={d.max_length}")
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


def to_device(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """A collated batch on `device` (a model's or engine's). The copies do not block: a host-to-device
    copy from ordinary memory is staged before the call returns, so the host need not wait for the
    device to drain its queue (PyTorch's blocking copy synchronises the stream)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


GROUP_BATCHES = 50
"""Length grouping sorts runs of this many global batches at a time (Hugging Face's mega-batch)."""


@dataclass
class BatchStream:
    """Endless, resumable order over a sample list: epoch e is permutation(seed + e).

    Global batch b is items [b*G, (b+1)*G) of the concatenated epochs, so the position in the data
    is one integer (`next_batch`), and rank r's micro-batch k of it is the (k*world + r)-th slice:
    the same samples meet the same micro-batches whatever the world size.

    With `lengths`, batches are length-grouped: each run of GROUP_BATCHES global batches of the
    shuffled order is sorted by length and cut into global batches, whose order is shuffled again
    (a short last batch stays last). Every batch then holds samples of similar length, so dynamic
    padding pads little, while which samples meet, and when, stays random.
    """

    size: int
    global_batch: int
    seed: int
    shuffle: bool = True
    next_batch: int = 0
    lengths: tuple[int, ...] = ()
    """Sample lengths in tokens for length grouping; empty = plain shuffle."""
    _cached: tuple[int, list[int]] | None = field(default=None, init=False, repr=False, compare=False)
    """(epoch, order) last computed: a step reads one epoch's order, built once (tens of ms at 30k)."""

    def __post_init__(self):
        if self.lengths and len(self.lengths) != self.size:
            raise ValueError(f"{len(self.lengths)} lengths for {self.size} samples")

    def _order(self, epoch: int) -> list[int]:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._build_order(epoch))
        return self._cached[1]

    def _build_order(self, epoch: int) -> list[int]:
        order = list(range(self.size))
        if not self.shuffle:
            return order
        rng = random.Random(self.seed * 100_003 + epoch)
        rng.shuffle(order)
        if not self.lengths:
            return order
        grouped: list[int] = []
        span, g = GROUP_BATCHES * self.global_batch, self.global_batch
        for start in range(0, self.size, span):
            run = sorted(order[start:start + span], key=lambda i: -self.lengths[i])
            full = [run[j:j + g] for j in range(0, len(run) - len(run) % g, g)]
            rng.shuffle(full)
            grouped += [i for batch in full for i in batch] + run[len(full) * g:]
        return grouped

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


def length_chunks(lengths: list[int], pass_cost: int) -> list[list[int]]:
    """Cut samples (by index) into length-sorted chunks minimising padded tokens + `pass_cost` per chunk.

    Exact dynamic programme over the sorted order (an optimal cut is contiguous there): cost[j] =
    min over i < j of cost[i] + pass_cost + (j - i) * longest of sorted[i:j]. O(n^2), n <= a few 100.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    cost, cut = [0] + [math.inf] * n, [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]  # sorted ascending: the chunk [i, j) pads to sample j - 1
        for i in range(j):
            c = cost[i] + pass_cost + (j - i) * longest
            if c < cost[j]:
                cost[j], cut[j] = c, i
    chunks, j = [], n
    while j > 0:
        chunks.append(order[cut[j]:j])
        j = cut[j]
    return chunks[::-1]


def padded_tokens(samples: list[Sample], stream: BatchStream, micro_batch: int) -> tuple[int, int]:
    """(real, padded) tokens of one epoch of `stream`'s micro-batches (padding to each one's longest)."""
    real = padded = 0
    for _ in range(math.ceil(stream.size / stream.global_batch)):
        for ids in stream.take(micro_batch, 0, 1):
            lens = [len(samples[i]["input_ids"]) for i in ids]
            real, padded = real + sum(lens), padded + len(lens) * max(lens)
    return real, padded


def steps_for_epochs(epochs: float, n_samples: int, global_batch: int) -> int:
    return max(1, math.ceil(epochs * n_samples / global_batch))


# ----------------------------------------------------------------------------- random mismatch

@dataclass
class RandomAnswers:
    """Random-mismatch samples: each forget sample's prompt with `k` random normal answers.

    The answers are drawn afresh for every optimizer step from a generator seeded by (seed, step,
    sample index), so a step's samples are the same whatever the world size and after a resume.
    """

    pool: list[str]
    k: int
    seed: int
    tokenizer: Any
    template: str
    max_length: int
    append_eos: bool = True

    def __post_init__(self):
        self._encode = _Memo(self.tokenizer)  # each step re-encodes the same prompts and pool answers

    def samples(self, forget: list[Sample], ids: list[int], step: int) -> list[Sample]:
        """len(forget) * k samples for forget samples `forget` (dataset indices `ids`) at `step`."""
        out = []
        for i, sample in zip(ids, forget):
            rng = random.Random(f"{self.seed}/{step}/{i}")
            for answer in rng.sample(self.pool, min(self.k, len(self.pool))):
                out.append(qa_sample(sample["prompt"], answer, self._encode, self.template,
                                     self.max_length, self.append_eos))
        return out


class _Memo:
    """`tokenizer`'s encodings as `qa_sample` asks for them, each text encoded once."""

    def __init__(self, tokenizer):
        self.tokenizer, self.eos_token_id, self.seen = tokenizer, tokenizer.eos_token_id, {}

    def __call__(self, text: str, add_special_tokens: bool) -> dict[str, list[int]]:
        key = (text, add_special_tokens)
        if key not in self.seen:
            self.seen[key] = {"input_ids": self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]}
        return self.seen[key]


def random_answers(cfg, tokenizer, forget: list[Sample]) -> RandomAnswers:
    """The random-mismatch sampler over `forget`, its pool from every data.retain source."""
    d = cfg.data
    if any("prompt" not in s for s in forget):
        raise UserError(f"method.mismatch_weight>0 needs prompts, but data.forget '{d.forget}' has plain "
                        "text samples; expected a QA, PKU-SafeRLHF or sentences forget set (or mismatch_weight=0)")
    pool: list[str] = []
    for source in split_sources(d.retain):
        rows, fmt = read(source, "retain", d)
        if fmt in ("text", "sentences"):
            raise UserError(f"method.mismatch_weight>0 draws random answers from data.retain, but '{source}' "
                            f"is read as {fmt}; expected a QA or TruthfulQA retain set")
        pool += sources.answer_pool(rows, fmt, source, d.skip_bad_rows)
    if d.num_random_answers < 1 or not pool:
        raise UserError(f"random mismatch needs data.num_random_answers >= 1 (got {d.num_random_answers}) "
                        f"and a non-empty answer pool (got {len(pool)} answers from data.retain)")
    return RandomAnswers(pool, d.num_random_answers, cfg.train.seed, tokenizer, d.prompt_template,
                         d.max_length, d.append_eos)


def split_sources(sources_csv: str) -> list[str]:
    """`a.jsonl,b.jsonl` -> the list of sources (data.forget / data.retain may name several)."""
    return [s.strip() for s in sources_csv.split(",") if s.strip()]
