"""ZeRO-1/2's optimizer step with one host-device sync (`train.one_sync_step`, on by default).

DeepSpeed 0.19.8's `DeepSpeedZeroOptimizer.step()` is right, but on a GPU it costs host time that
grows with the number of parameter tensors and waits on the device several times. Counted by
`unlearn/bench/hostcost.py` (a bf16 step at OPT-1.3b's depth, 388 parameter tensors):

* the overflow scan (bf16): each gradient tensor checked for inf/NaN on its own, 12 operators a
  tensor, and the flag read on the host (a sync);
* the global norm: an fp64 copy, a norm and a move per tensor, then the norm read on the host
  twice (`is_invalid_grad_norm` in `step()` and again in `unscale_and_clip_grads`) and a blocking
  host-to-device copy of the -1 it writes over a non-finite norm (3 syncs, 2 of them in fp32 too);
* after the all-gather, every weight re-pointed at its slice of the flat bit16 buffer, 4 operators
  a tensor, where it already is (DeepSpeed's own comment: "we probably don't need this").

`install(engine)` wraps the optimizer's `step` so that each step:

1. computes the same global norm with one `torch._foreach_norm` per parameter group: per tensor
   the L2 norm in DeepSpeed's norm dtype (fp64), their squares summed and cast to fp32,
   all-reduced over the data-parallel group, square-rooted, and the groups combined by
   DeepSpeed's own `combine_grad_norm_groups`: bit-equal to `scaled_global_norm()` on a CPU
   (`tests/test_zero_step.py`);
2. reads it once (the one sync). Any inf/NaN in any gradient makes the norm non-finite, so this
   one read is also the overflow check: a non-finite norm hands the step to DeepSpeed's own
   `step()`, which finds the same overflow and discards the step as before (a skipped step pays
   DeepSpeed's syncs; a normal one pays one);
3. runs DeepSpeed's `step()` with what it would recompute handed in, for this call only: no second
   overflow scan, this norm as `scaled_global_norm()`, this norm known valid to
   `is_invalid_grad_norm` (recognised by identity, so no other value is affected), and no
   re-pointing while every weight still views the flat buffer (checked before each step by the
   buffers' addresses, and in full whenever one moves). Everything else (flattening, clipping on
   the device, AdamW, the all-gather, the LR schedule, `skipped_steps`) is DeepSpeed's code.

Installed only where that is all `step()` does: ZeRO stage 1 or 2, no optimizer offload, no
model/pipeline parallelism, no MoE, no fp16 loss scaling, no ZenFlow or torch autocast, the
gradient norm computed. Elsewhere (ZeRO-3 included) the engine keeps DeepSpeed's step.
`train.one_sync_step=false` keeps it everywhere; the two give the same weights (the test above,
fp32 and bf16, with clipping, a skipped step and two ranks).
"""

from __future__ import annotations

import contextlib
import math
import types

import deepspeed  # imported by engine.initialize only, once DeepSpeed is in use
import torch
from deepspeed import comm as dist
from deepspeed.runtime.utils import combine_grad_norm_groups
from deepspeed.runtime.zero import stage_1_and_2 as zero
from deepspeed.runtime.zero.utils import get_norm_dtype

DEEPSPEED_VERSION = "0.19.8"
"""The DeepSpeed whose `step()` this wrapper was read against and is tested with; another version
keeps DeepSpeed's own step (meta.json's `optimizer_step` says which ran, and why)."""


def install(engine) -> str:
    """Wrap the engine's ZeRO optimizer step if it qualifies; returns "" or why it does not."""
    opt = engine.optimizer
    if deepspeed.__version__ != DEEPSPEED_VERSION:
        why = f"DeepSpeed {deepspeed.__version__}"
    elif not isinstance(opt, zero.DeepSpeedZeroOptimizer):
        why = f"{type(opt).__name__} (ZeRO-3 or stage 0)"
    else:
        why = _unsupported(opt)
    if not why:
        opt.step = types.MethodType(_step, opt)
        opt._one_sync_views = _flat_addresses(opt) if _views_intact(opt) else None
    return why


def _unsupported(opt) -> str:
    checks = {"optimizer offload": opt.cpu_offload, "ZenFlow": opt.zenflow, "MoE layers": opt.has_moe_layers,
              "model parallelism": opt.mpu is not None, "torch autocast": opt.torch_autocast_gradscaler is not None,
              "fp16 loss scaling": opt.dtype == torch.float16 or opt.loss_scale != 1.0,
              "compute_grad_norm=false": not opt.compute_grad_norm}
    return ", ".join(name for name, present in checks.items() if present)


def global_norm(opt) -> torch.Tensor:
    """DeepSpeed's `scaled_global_norm()` (L2 over every gradient of this optimizer, all ranks) with
    one fused norm per group instead of a norm per tensor; the same operations on the same dtypes."""
    groups = []
    for i in range(len(opt.bit16_groups)):
        grads = [g for g in opt.averaged_gradients[i] if not getattr(g, "_zero_padding", False)]
        if grads:
            norms = torch._foreach_norm(grads, 2.0, dtype=get_norm_dtype())
            square_sum = torch.stack(norms).pow(2.0).sum().float()
        else:
            square_sum = torch.zeros((), dtype=torch.float32, device=opt.device)
        dist.all_reduce(square_sum, op=dist.ReduceOp.SUM, group=opt.dp_process_group)
        groups.append(square_sum.pow(0.5))
    return combine_grad_norm_groups(groups)


def _step(opt, closure=None):
    """The optimizer's `step`, bound by `install`."""
    cls = type(opt)
    norm = global_norm(opt)
    if not math.isfinite(norm.item()):  # the one sync: any inf/NaN gradient makes the norm inf/NaN
        return cls.step(opt, closure)  # DeepSpeed's path finds the overflow and discards the step
    with _checked(opt, norm):
        return cls.step(opt, closure)


@contextlib.contextmanager
def _checked(opt, norm: torch.Tensor):
    """For one DeepSpeed `step()`: the overflow check done, `norm` its global norm, known valid."""
    is_invalid = zero.is_invalid_grad_norm
    zero.is_invalid_grad_norm = lambda value: False if value is norm else is_invalid(value)
    opt.check_overflow = lambda partition_gradients=True: None  # self.overflow stays False
    opt.scaled_global_norm = lambda norm_type=2: norm
    if _views_still_intact(opt):
        opt._update_model_bit16_weights = lambda group_index: None
    try:
        yield
    finally:
        zero.is_invalid_grad_norm = is_invalid
        for name in ("check_overflow", "scaled_global_norm", "_update_model_bit16_weights"):
            opt.__dict__.pop(name, None)


def _flat_addresses(opt) -> tuple[int, ...]:
    return tuple(flat.data_ptr() for flat in opt.bit16_groups_flat)


def _views_intact(opt) -> bool:
    """Whether every weight is the slice of its group's flat bit16 buffer that re-pointing would
    make it (DeepSpeed's round-robin offsets and shapes)."""
    for i, flat in enumerate(opt.bit16_groups_flat):
        size = flat.element_size()
        for p, meta, offset in zip(opt.round_robin_bit16_groups[i], opt.round_robin_bit16_meta[i],
                                   opt.round_robin_bit16_offsets[i]):
            if p.data_ptr() != flat.data_ptr() + offset * size or p.shape != meta.shape:
                return False
        if any(a is not b for a, b in zip(opt.bit16_groups[i], _reordered(opt, i))):
            return False
    return True


def _reordered(opt, i: int):
    groups = opt.round_robin_bit16_groups[i]
    return [groups[j] for j in opt.round_robin_bit16_indices[i]]


def _views_still_intact(opt) -> bool:
    """Cheap per step: the flat buffers have not moved since the full check (only DeepSpeed's
    offload_states moves them, and it re-points the weights itself); re-checked in full if they did."""
    addresses = _flat_addresses(opt)
    if opt._one_sync_views != addresses:
        opt._one_sync_views = addresses if _views_intact(opt) else None
    return opt._one_sync_views is not None
