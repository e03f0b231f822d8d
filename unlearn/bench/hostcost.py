"""Host cost of a step, counted the same way on any device: operators dispatched and host-device
synchronisations.

A GPU step is fast only while the host queues kernels faster than the GPU runs them: every
operator is a launch, and every synchronisation drains the queue (the GPU idles until the host
catches up). Both are properties of the code, not of the device, so they are counted on a CPU:

* operators: every ATen operator that reaches a kernel (a `TorchDispatchMode`, below autograd, so
  the backward's operators count too), per owner: the first stack frame outside torch names the
  package that asked for it (unlearn, deepspeed, transformers, ...);
* synchronisations, what stalls the host on a GPU:
  - `scalar`: a device value read on the host (`aten::_local_scalar_dense`: `.item()`, `float(t)`,
    `int(t)`, `bool(t)`, `if t:`);
  - `shape`: an operator whose output size depends on the values (`nonzero`, `masked_select`,
    boolean-mask indexing, `unique`, `equal`): the host must learn the size to go on;
  - `copy`: a blocking copy between host and device (`.to(device)` / `.cuda()` without
    `non_blocking=True`, `.cpu()`, `torch.tensor(..., device=...)`, `copy_` across): PyTorch
    synchronises the stream after each (what `torch.cuda.set_sync_debug_mode` flags);
  - `list`: a device tensor read into Python (`.tolist()`, `.numpy()`).

On a CPU every tensor is a host tensor, so placement is simulated: a tensor is a *host* tensor when
made under the count by a factory without a `device=` (`torch.tensor(list)`, `torch.arange(n)`, ...),
by `.cpu()`, or by an operator whose tensor inputs are all host tensors; every other tensor (weights,
gradients, optimizer state, anything made with `device=` or moved with `.to(device)`) is a *device*
tensor. Only device tensors synchronise; moving a device tensor `.to(device)` is free.
"""

from __future__ import annotations

import sys
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten
SHAPE_OPS = frozenset({aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
                       aten.unique_consecutive.default, aten.unique_dim.default, aten.equal.default,
                       aten.repeat_interleave.Tensor})
"""Operators whose output size (or Python value, for `equal`) depends on the tensor's values."""
LIST_METHODS = frozenset({torch.Tensor.tolist, torch.Tensor.numpy})
FACTORIES = frozenset({torch.tensor, torch.as_tensor})
OWNERS = ("unlearn", "deepspeed", "transformers", "peft", "bitsandbytes", "tests")

_TORCH = str(Path(torch.__file__).parent)
_THIS = str(Path(__file__))


@dataclass
class Counts:
    ops: int = 0
    """ATen operators dispatched."""
    ops_by_owner: Counter = field(default_factory=Counter)
    """Operators per package that asked for them (unlearn, deepspeed, transformers, ...)."""
    syncs: Counter = field(default_factory=Counter)
    """Synchronisations per kind (scalar, shape, copy, list)."""
    sync_owners: Counter = field(default_factory=Counter)
    """Synchronisations per package that asked for them."""
    sites: Counter = field(default_factory=Counter)
    """Synchronisations per calling line ("folder/file.py:line function")."""

    @property
    def total_syncs(self) -> int:
        return sum(self.syncs.values())

    def to_json(self, top: int = 12) -> dict:
        return {"ops": self.ops, "syncs": self.total_syncs, "ops_by_owner": dict(self.ops_by_owner.most_common()),
                "syncs_by_kind": dict(self.syncs), "syncs_by_owner": dict(self.sync_owners),
                "syncs_by_site": dict(self.sites.most_common(top))}


def _caller():
    """The first frame outside torch and this module."""
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(_TORCH) or frame.f_code.co_filename == _THIS):
        frame = frame.f_back
    return frame


def _owner(frame) -> str:
    if frame is None:
        return "torch"  # the autograd engine's own thread, or torch calling itself
    if torch._C._current_autograd_node() is not None and "backward" in frame.f_code.co_name:
        return "autograd"  # a backward kernel (the frame is whoever called .backward()), not a hook
    for part in reversed(Path(frame.f_code.co_filename).parts[:-1]):  # the innermost package folder
        if part in OWNERS:
            return part
    return "other"


def _site(frame) -> str:
    if frame is None:
        return "torch"
    return f"{'/'.join(Path(frame.f_code.co_filename).parts[-2:])}:{frame.f_lineno} {frame.f_code.co_name}"


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class _Placement:
    """Which tensors made under the count are host tensors (see the module docstring); kept by
    identity (a tensor's `==` is elementwise), forgotten when the tensor is freed."""

    def __init__(self):
        self.host: dict[int, weakref.ref] = {}

    def is_host(self, t: torch.Tensor) -> bool:
        if t.device.type != "cpu":
            return False  # really on a device
        ref = self.host.get(id(t))
        return ref is not None and ref() is t

    def mark(self, tree, host: bool) -> None:
        for t in _tensors(tree):
            if host:
                key = id(t)
                self.host[key] = weakref.ref(t, lambda _, k=key, h=self.host: h.pop(k, None))
            else:
                self.host.pop(id(t), None)


class _Count:
    """What both modes share: the counts, the placement, and how a sync is recorded."""

    def __init__(self, counts: Counts, placement: _Placement):
        super().__init__()  # the torch mode's own
        self.counts, self.placement = counts, placement

    def sync(self, kind: str) -> None:
        frame = _caller()
        self.counts.syncs[kind] += 1
        self.counts.sync_owners[_owner(frame)] += 1
        self.counts.sites[_site(frame)] += 1


class _Functions(_Count, TorchFunctionMode):
    """Python-level calls: copies between host and device, tensors read into Python, factories."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        src = args[0] if args and isinstance(args[0], torch.Tensor) else None
        on_device = src is not None and not self.placement.is_host(src)
        if func in LIST_METHODS and on_device:
            self.sync("list")
        elif func is torch.Tensor.cpu and on_device:
            self.sync("copy")
        moved = _moves_to_device(func, args, kwargs) and (src is None or not on_device)
        if moved and not _non_blocking(func, args, kwargs):
            self.sync("copy")
        out = func(*args, **kwargs)
        if moved:
            if out is src:  # a no-op on this CPU: a new tensor on a GPU, so the host one stays a host one
                out = out.view_as(out)
            self.placement.mark(out, host=False)
        elif func is torch.Tensor.cpu:
            self.placement.mark(out, host=True)
        elif func in FACTORIES or func is torch.from_numpy:  # data from Python: a host tensor
            self.placement.mark(out, host=True)
        elif not _tensors((args, kwargs)):  # torch.zeros(n), torch.arange(n, device=...)
            self.placement.mark(out, host=kwargs.get("device") is None)
        return out


def _moves_to_device(func, args, kwargs) -> bool:
    """A call that puts data on the run's device: `.to(device)`, `.cuda()`, `torch.tensor(x, device=)`."""
    if func is torch.Tensor.cuda:
        return True
    if func in FACTORIES:
        return kwargs.get("device") is not None
    if func is not torch.Tensor.to:
        return False
    target = kwargs.get("device", args[1] if len(args) > 1 else None)
    return isinstance(target, torch.device | str | torch.Tensor)


def _non_blocking(func, args, kwargs) -> bool:
    if kwargs.get("non_blocking"):
        return True
    flags = [a for a in args[2:] if isinstance(a, bool)]  # .to(device, dtype, non_blocking) / .cuda(d, nb)
    return bool(flags and flags[0])


class _Dispatch(_Count, TorchDispatchMode):
    """Every operator: counted, its outputs placed, and the value-dependent ones flagged."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        frame = _caller()
        self.counts.ops += 1
        self.counts.ops_by_owner[_owner(frame)] += 1
        inputs = _tensors((args, kwargs))
        # a factory (no tensor inputs) makes a device tensor unless a Python call without device= asked
        host = bool(inputs) and all(self.placement.is_host(t) for t in inputs)
        if not host:
            if func is aten._local_scalar_dense.default:
                self.sync("scalar")
            elif func in SHAPE_OPS or (func is aten.index.Tensor and any(
                    t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1])):
                self.sync("shape")
            elif func is aten.copy_.default and self.placement.is_host(args[0]) and not kwargs.get("non_blocking"):
                self.sync("copy")  # device values into a host tensor
        out = func(*args, **kwargs)
        if func is aten.copy_.default:  # in place: the destination keeps its placement
            return out
        self.placement.mark(out, host=host)
        return out


def count(fn, *args, **kwargs) -> tuple[Counts, object]:
    """(host cost of `fn(*args, **kwargs)`, its result)."""
    counts, placement = Counts(), _Placement()
    with _Functions(counts, placement), _Dispatch(counts, placement):
        result = fn(*args, **kwargs)
    return counts, result
