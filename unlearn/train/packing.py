"""The packed step (`train.pack=true`): one policy pass per micro-batch over every term's sequences
(two when a term needs the reference model), each shared prompt computed once, no padding beyond
what bin packing leaves, and vocabulary logits only at the positions a loss reads.

The unpacked step (`train.pack=false`, kept as the reference) collates each term on its own, pads
it to its longest sample, runs the prompt of a forget sample again for each of its K random
answers, and projects every position from the first answer token on onto the vocabulary. Here:

* Sequences that begin with the same prompt (a forget sample and its K random-mismatch answers)
  form one unit: the prompt's tokens sit once in a row and each answer follows with its own
  positions (continuing the prompt's) and attends to the prompt and causally to itself (a
  tree-shaped attention mask). Each answer sees exactly the keys and values it sees alone, and
  its gradient flows back through the one copy of the prompt.
* Units go into rows by first-fit decreasing, each row at most the longest unit long, so
  attention never spans more than that unit and padding is what the packing leaves.
* Terms that need the reference model (KL, NPO, UNDIAL) are packed apart, and the policy and the
  reference run the very same rows for them, so the two agree exactly while their weights do.
* The LM head runs only at read positions (`logits_to_keep` as (rows, K) column indices, K the
  most reads of a row; a row with fewer repeats its last read): position t is read when
  labels[t+1] != -100. Each term then sees a compact batch, row b holding sequence b's read
  positions in order with its labels shifted as `unlearn.losses` expects, so every loss in
  PACKABLE (each reads logits only at those positions) has the unpacked step's value.
* Nothing waits for the device: every index is built on the host and copied without blocking (a
  boolean mask would make the device count its True cells first, a sync before the LM head).

Dropout (model.dropout=true) draws one mask for a shared prompt instead of one per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from unlearn.data import IGNORE, Sample, to_device
from unlearn.methods import Forward

PACKABLE = frozenset({"ga", "npo", "simnpo", "wga", "satimp", "undial", "ceu", "nll", "kl", "random_mismatch"})
"""Objectives whose loss reads logits only at positions t with labels[t+1] != -100 (checked against
the unpacked step in tests/test_packing.py). Any other objective runs the unpacked step."""


@dataclass
class Packed:
    """Rows for one forward pass and where each sequence's read positions land in its output."""

    batch: dict[str, torch.Tensor]
    """input_ids and position_ids (R, W); attention_mask (R, 1, W, W) additive (0 attend, min not)."""
    keep: torch.Tensor
    """(R, K) long: the columns of each row's read positions, in order (short rows repeat their
    last); their logits come back as (R, K, V), read flattened to (R * K, V)."""
    reads: list[list[int]]
    """Per sequence (input order): the index of each read position among the flattened kept logits."""
    targets: list[list[int]]
    """Per sequence: the token each read position predicts."""
    real_tokens: int
    """Tokens of the sequences as given (shared prompts counted once per sequence)."""
    positions: int
    """Positions the model computes: rows x width."""


def prompt_length(labels: list[int]) -> int:
    """The first position >= 1 with a label: tokens before it are the sequence's prompt."""
    return next((t for t in range(1, len(labels)) if labels[t] != IGNORE), len(labels))


def pack(samples: list[Sample], pad_id: int, dtype: torch.dtype) -> Packed:
    """Pack `samples` into rows (see the module docstring); `dtype` is the attention mask's."""
    units: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(samples):
        units.setdefault(tuple(s["input_ids"][:prompt_length(s["labels"])]), []).append(i)
    size = {k: len(k) + sum(len(samples[i]["input_ids"]) - len(k) for i in members) for k, members in units.items()}
    width = max(size.values())
    rows: list[list[tuple[int, ...]]] = []
    fill: list[int] = []
    for key in sorted(units, key=lambda k: -size[k]):  # first-fit decreasing
        r = next((r for r, f in enumerate(fill) if f + size[key] <= width), len(rows))
        if r == len(rows):
            rows.append([])
            fill.append(0)
        rows[r].append(key)
        fill[r] += size[key]
    ids: list[list[int]] = []
    pos: list[list[int]] = []
    seg: list[list[int]] = []  # the block (a prompt, an answer, one pad cell) each cell belongs to
    parent: list[list[int]] = []  # an answer's cells: its prompt's block; -1 elsewhere
    cells: list[list[tuple[int, int]]] = [[] for _ in samples]  # (row, column) of each read
    targets: list[list[int]] = [[] for _ in samples]
    for r, keys in enumerate(rows):
        ids_r, pos_r, seg_r, parent_r = [], [], [], []
        for key in keys:
            a, start, prompt = len(key), len(ids_r), len(seg_r) and seg_r[-1] + 1
            ids_r += key
            pos_r += range(a)
            seg_r += [prompt] * a
            parent_r += [-1] * a
            for block, i in enumerate(units[key], prompt + 1):
                c, tail = len(ids_r), samples[i]["input_ids"][a:]
                ids_r += tail
                pos_r += range(a, a + len(tail))
                seg_r += [block] * len(tail)
                parent_r += [prompt] * len(tail)
                labels = samples[i]["labels"]
                for t in range(len(labels) - 1):
                    if labels[t + 1] != IGNORE:
                        cells[i].append((r, start + t if t < a else c + t - a))
                        targets[i].append(labels[t + 1])
        pad = width - len(ids_r)  # padding attends to itself only: no empty softmax row
        first = len(seg_r) and seg_r[-1] + 1
        ids.append(ids_r + [pad_id] * pad)
        pos.append(pos_r + [0] * pad)
        seg.append(seg_r + list(range(first, first + pad)))
        parent.append(parent_r + [-1] * pad)
    segs, parents = torch.tensor(seg), torch.tensor(parent)
    allowed = ((segs[:, :, None] == segs[:, None, :]) & torch.ones(width, width, dtype=torch.bool).tril()) | \
        (parents[:, :, None] == segs[:, None, :])
    read_cols = [sorted({col for cell in cells for r_, col in cell if r_ == r}) for r in range(len(rows))]
    k = max(1, *(len(cols) for cols in read_cols))
    keep = torch.tensor([cols + (cols[-1:] or [0]) * (k - len(cols)) for cols in read_cols])
    slot = {(r, col): r * k + j for r, cols in enumerate(read_cols) for j, col in enumerate(cols)}
    reads = [[slot[c] for c in cell] for cell in cells]
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return Packed({"input_ids": torch.tensor(ids), "position_ids": torch.tensor(pos), "attention_mask": mask[:, None]},
                  keep, reads, targets, sum(len(s["input_ids"]) for s in samples), len(rows) * width)


def compact(kept: torch.Tensor, packed: Packed, seqs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (B, L+1, V), labels (B, L+1)) of sequences `seqs` from the kept logits (R * K, V): row b
    holds sequence b's read positions in order; labels[b, j+1] is what position j predicts. Unused
    cells repeat kept row 0 under label -100, as padding sits under -100 in the unpacked batch."""
    longest = max(len(packed.reads[i]) for i in seqs)
    idx = [packed.reads[i] + [0] * (longest + 1 - len(packed.reads[i])) for i in seqs]
    labels = [[IGNORE] + packed.targets[i] + [IGNORE] * (longest - len(packed.targets[i])) for i in seqs]
    idx, labels = torch.tensor(idx, dtype=torch.long), torch.tensor(labels, dtype=torch.long)
    return kept[idx.to(kept.device, non_blocking=True)], labels.to(kept.device, non_blocking=True)


def forwards(policy_logits, reference_logits, samples: dict[str, list[Sample]], needs_reference: dict[str, bool],
             pad_id: int, dtype: torch.dtype, device) -> tuple[dict[str, Forward], int, int]:
    """Per term name, its Forward over the packed passes; plus (real tokens, positions computed)
    through the policy. `policy_logits(batch, keep)` / `reference_logits(batch, keep)` run a pass.

    Terms that need the reference get a policy pass of their own, over exactly the rows the
    reference pass sees: the two compute the same thing while the weights agree (KL is exactly 0
    at step 0, as unpacked). The other terms share the second pass."""
    out, tokens, positions = {}, 0, 0
    for with_ref in (True, False):
        names = [n for n in samples if needs_reference[n] == with_ref]
        if not names:
            continue
        flat = [s for n in names for s in samples[n]]
        packed = pack(flat, pad_id, dtype)
        batch, keep = to_device(packed.batch, device), packed.keep.to(device, non_blocking=True)
        kept = policy_logits(batch, keep).flatten(0, 1)                            # (R * K, V)
        ref_kept = reference_logits(batch, keep).flatten(0, 1) if with_ref else None
        start = 0
        for n in names:
            seqs = list(range(start, start + len(samples[n])))
            start += len(seqs)
            logits, labels = compact(kept, packed, seqs)
            out[n] = Forward(logits, labels, compact(ref_kept, packed, seqs)[0] if with_ref else None)
        tokens, positions = tokens + packed.real_tokens, positions + packed.positions
    return {n: out[n] for n in samples}, tokens, positions
