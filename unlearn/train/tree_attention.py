"""Attention over a packed row's blocks only: the cells its tree mask allows, not the whole row.

A packed row (unlearn.train.packing) holds blocks: a prompt, the answers that continue it, single
sequences. A block attends causally to itself and, for an answer, to its prompt; every other cell of
the row's W x W mask is masked out. Dense attention under that mask still computes all W^2 scores: on
the paper's data (XSTest pairs, a prompt and 6 answers in one row) most of them. Here each block is
one small attention problem, queries = the block, keys = its prompt then itself, and the blocks of
every row run as one batched SDPA call: gather the block's queries, keys and values from the row,
attend, scatter the outputs back to their positions. The result equals the masked dense attention up
to float summation order (softmax over the same allowed keys; a masked cell contributes exactly 0).

Installed as the attention implementation "unlearn_tree" of the training models (policy and reference)
where they would use SDPA; a forward without `tree=` (the unpacked step, evaluation) is plain SDPA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NAME = "unlearn_tree"


@dataclass
class Tree:
    """Blocks of a packed batch (R rows of width W), as indices into its R*W flattened positions."""

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

    def to(self, device) -> Tree:
        return Tree(*(t.to(device) for t in (self.queries, self.keys, self.mask, self.targets, self.valid)))


def blocks_tree(blocks: list[tuple[int, int, int, int]]) -> Tree:
    """The Tree of blocks given as (flat start of the block, its length, flat start of its prompt, the
    prompt's length; 0 where it has none), flat = row * W + column."""
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
    return Tree(queries, keys, mask, queries[valid], valid)


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      tree: Tree | None = None, **kwargs):
    """transformers' attention interface: (R, H, W, D) query/key/value -> ((R, W, H, D) output, None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if tree is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows, heads, width, dim = query.shape

    def gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # (R, H, W, D) -> (S, H, len, D)
        return t.transpose(1, 2).reshape(rows * width, heads, dim)[index].transpose(1, 2)

    out = torch.nn.functional.scaled_dot_product_attention(
        gather(query, tree.queries), gather(key, tree.keys), gather(value, tree.keys), attn_mask=tree.mask[:, None],
        dropout_p=dropout, scale=scaling)
    out = out.transpose(1, 2)[tree.valid]  # (N, H, D)
    full = out.new_zeros(rows * width, heads, dim).index_copy(0, tree.targets, out)
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
