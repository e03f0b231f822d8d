"""Attention over a packed row's blocks only: the cells its tree mask allows, not the whole row.

A packed row (unlearn.train.packing) holds blocks: a prompt, the answers that continue it, single
sequences. A block attends causally to itself and, for an answer, to its prompt; every other cell of
the row's W x W mask is masked out. Dense attention under that mask still computes all W^2 scores: on
the paper's data (XSTest pairs, a prompt and 6 answers in one row) most of them. Here each block is
one small attention problem, queries = the block, keys = its prompt then itself. Blocks of similar
length run as one batched SDPA call (each padded to its group's longest): gather the blocks' queries,
keys and values from the rows, attend, scatter the outputs back to their positions. The groups are cut
to minimise the cells computed plus GROUP_COST cells per call, and where that is not below the dense
W^2 per row (short rows, e.g. the demo's), the packed batch keeps dense attention (no Tree). The result
equals the masked dense attention up to float summation order (softmax over the same allowed keys; a
masked cell contributes exactly 0).

Installed as the attention implementation "unlearn_tree" of the training models (policy and reference)
where they would use SDPA; a forward without `tree=` (the unpacked step, evaluation) is plain SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NAME = "unlearn_tree"
GROUP_COST = 4096
"""Cells one more SDPA call is worth (its gathers, scatter and launch), measured on the tiny and
OPT-125m shapes on a CPU: with fewer, a batch of mixed block lengths runs slower than dense."""


@dataclass
class Group:
    """Blocks of a packed batch (R rows of width W) run in one call, as indices into its R*W positions."""

    queries: torch.Tensor
    """(S, A) long: block s's positions (padded with its first position)."""
    keys: torch.Tensor
    """(S, P + A) long: block s's prompt positions (padded to P), then its own positions (padded to A)."""
    mask: torch.Tensor
    """(S, A, P + A) bool: query i of block s may attend key j (a padded query attends its first key only)."""
    targets: torch.Tensor
    """(N,) long: the position of each real query, in the order of `queries[valid]`."""
    valid: torch.Tensor
    """(S, A) bool: the real queries."""

    def to(self, device) -> Group:
        return Group(*(t.to(device) for t in (self.queries, self.keys, self.mask, self.targets, self.valid)))


@dataclass
class Tree:
    groups: list[Group]

    @property
    def targets(self) -> torch.Tensor:
        """Every real position once, in the order the groups' outputs come."""
        return torch.cat([g.targets for g in self.groups])

    def to(self, device) -> Tree:
        return Tree([g.to(device) for g in self.groups])


def cells(blocks: list[tuple[int, int, int, int]]) -> int:
    """Scores one call computes for `blocks`: each padded to the longest block and the longest prompt."""
    return len(blocks) * max(b[1] for b in blocks) * (max(b[1] for b in blocks) + max(b[3] for b in blocks))


def blocks_tree(blocks: list[tuple[int, int, int, int]], dense_cells: int) -> Tree | None:
    """The Tree of blocks given as (flat start of the block, its length, flat start of its prompt, the
    prompt's length; 0 where it has none), flat = row * W + column: sorted by length and cut into the
    groups of least cells + GROUP_COST per group. None where that is not below `dense_cells` (R W^2)."""
    order = sorted(blocks, key=lambda b: (b[1], b[3]))
    best = [0] + [None] * len(order)  # best[j]: least cost of the first j blocks, with cut[j] its last group start
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        longest, prompt = order[j - 1][1], 0
        for i in range(j - 1, -1, -1):  # the group order[i:j]; its longest block is order[j - 1]
            prompt = max(prompt, order[i][3])
            cost = best[i] + (j - i) * longest * (longest + prompt) + GROUP_COST
            if best[j] is None or cost < best[j]:
                best[j], cut[j] = cost, i
    if best[-1] >= dense_cells:
        return None
    groups, j = [], len(order)
    while j:
        groups.append(group(order[cut[j]:j]))
        j = cut[j]
    return Tree(groups[::-1])


def group(blocks: list[tuple[int, int, int, int]]) -> Group:
    start, length, pstart, plength = torch.tensor(blocks, dtype=torch.long).unbind(1)
    width, prefix = int(length.max()), int(plength.max())
    i = torch.arange(width)
    j = torch.arange(prefix + width)
    valid = i < length[:, None]
    queries = start[:, None] + torch.where(valid, i, 0)
    in_prompt = j < plength[:, None]
    own = j - prefix
    in_block = (own >= 0) & (own < length[:, None])
    keys = torch.where(in_prompt, pstart[:, None] + j, start[:, None] + torch.where(in_block, own, 0))
    mask = in_prompt[:, None, :] | (in_block[:, None, :] & (own <= i[:, None]))
    mask |= ~valid[:, :, None] & (j == prefix)  # a padded query attends its block's first key: no empty softmax
    return Group(queries, keys, mask, queries[valid], valid)


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      tree: Tree | None = None, **kwargs):
    """transformers' attention interface: (R, H, W, D) query/key/value -> ((R, W, H, D) output, None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if tree is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, width, dim = query.shape
    query, key, value = (t.transpose(1, 2).reshape(rows * width, heads, dim) for t in (query, key, value))
    outs, targets = [], []
    for g in tree.groups:  # (S, H, len, D) per group
        out = torch.nn.functional.scaled_dot_product_attention(
            query[g.queries].transpose(1, 2), key[g.keys].transpose(1, 2), value[g.keys].transpose(1, 2),
            attn_mask=g.mask[:, None], dropout_p=dropout, scale=scaling)
        outs.append(out.transpose(1, 2)[g.valid])  # (N, H, D)
        targets.append(g.targets)
    full = query.new_zeros(rows * width, heads, dim).index_copy(0, torch.cat(targets), torch.cat(outs))
    return full.view(rows, width, heads, dim), None


def install(model) -> None:
    """Use tree attention in `model` where it uses SDPA (other implementations keep the dense mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if model.config._attn_implementation != "sdpa":
        return
    AttentionInterface.register(NAME, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    model.config._attn_implementation = NAME
