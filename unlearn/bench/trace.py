"""Where a step's time goes, from `torch.profiler` traces (Chrome trace JSON): device time by kernel
family, the gaps in which the device waited for the host, and each package's share (ours,
transformers', autograd's, DeepSpeed's).

The same code reads a GPU trace and a CPU one. On a GPU the kernels are the device's events
(`kernel`, `gpu_memcpy`, `gpu_memset`), each tied to the operator that launched it by its
"External id", and a gap is device time between kernels. On a CPU each operator's own time (its
duration less its sub-operators') is its kernel, and a gap is host time outside any operator.

An operator belongs to the package of its innermost Python frame outside torch (the trace's
`python_function` events, recorded with `with_stack=True`); a frame named `backward` means the
autograd engine's own kernels, as does an operator with no Python frame (the backward thread).
Recording Python frames slows the host several-fold, so `record` takes two traces: timing (span,
gaps, families) from one without frames, shares by package from one with them (its kernel times
hold on a GPU, its host times are inflated).
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

METADATA = frozenset({"aten::view", "aten::as_strided", "aten::t", "aten::transpose", "aten::empty", "aten::slice",
                      "aten::select", "aten::reshape", "aten::detach", "aten::alias", "aten::expand", "aten::unsqueeze",
                      "aten::squeeze", "aten::permute", "aten::narrow", "aten::_unsafe_view", "aten::lift_fresh",
                      "aten::result_type", "aten::resolve_conj", "aten::resolve_neg", "aten::empty_strided",
                      "aten::contiguous", "aten::view_as", "aten::flatten", "aten::unbind", "aten::split",
                      "aten::chunk", "aten::to", "aten::numpy_T", "aten::is_nonzero"})
"""Operators that only make or reshape a tensor's metadata (or call others that do the work)."""
FAMILIES = (
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "aten::mm", "aten::addmm", "aten::bmm",
              "aten::baddbmm", "aten::matmul")),
    ("softmax / cross-entropy", ("softmax", "cross_entropy", "nll_loss", "logsumexp")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("norm", ("layer_norm", "layernorm", "norm")),
    ("copy / cast", ("copy", "memcpy", "memset", "cat", "fill", "zero", "clone", "index", "gather")),
    ("reduction", ("reduce", "sum", "amax", "amin", "mean", "aten::any", "aten::all")),
    ("communication", ("nccl", "all_reduce", "allreduce", "gloo", "c10d", "broadcast")),
    ("elementwise", ("elementwise", "vectorized", "aten::")),
)
"""Kernel families by name fragment (lower case; the first match wins), for CUDA kernel names and
ATen operator names alike. Anything else is "other"."""
OWNERS = ("unlearn", "transformers", "deepspeed", "peft", "bitsandbytes", "tests")
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
GAP_US = 10.0
"""Gaps shorter than this (microseconds) are launch latency, not waiting; counted apart."""


def family(name: str) -> str:
    if name in METADATA:
        return "metadata (no kernel)"
    low = name.lower()
    return next((fam for fam, parts in FAMILIES if any(p in low for p in parts)), "other")


def owner_of_frame(name: str) -> str | None:
    """The package of a `python_function` event ("path(line): function"); None inside torch."""
    path, _, func = name.partition(": ")
    parts = path.split("(")[0].replace("\\", "/").split("/")
    if "torch" in parts[:-1] or not path.endswith(")"):  # torch itself, or a built-in method
        return None
    if func == "backward" or func.startswith("_backward"):
        return "autograd"
    return next((p for p in reversed(parts[:-1]) if p in OWNERS), "other")


def load(path: str | Path) -> list[dict]:
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def _operators(events: list[dict]) -> tuple[dict[int, str], dict[int, float], list[int]]:
    """(owner per cpu_op event index, its own time (less its sub-operators'), indices of top-level
    cpu_ops): one sweep per thread over the nesting of python_function and cpu_op events."""
    owner, own, top = {}, {}, []
    by_tid: dict[tuple, list[int]] = defaultdict(list)
    for i, e in enumerate(events):
        if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "python_function"):
            by_tid[(e.get("pid"), e.get("tid"))].append(i)
    for idxs in by_tid.values():
        idxs.sort(key=lambda i: (events[i]["ts"], -events[i].get("dur", 0)))
        frames: list[tuple[float, str | None]] = []  # open python frames: (end, owner)
        ops: list[tuple[float, int]] = []            # open cpu_ops: (end, index)
        for i in idxs:
            e = events[i]
            start, end = e["ts"], e["ts"] + e.get("dur", 0)
            while frames and frames[-1][0] <= start:
                frames.pop()
            while ops and ops[-1][0] <= start:
                ops.pop()
            if e["cat"] == "python_function":
                frames.append((end, owner_of_frame(e["name"])))
                continue
            owner[i] = next((o for _, o in reversed(frames) if o is not None), "autograd")
            own[i] = e.get("dur", 0.0)
            if ops:
                own[ops[-1][1]] -= e.get("dur", 0.0)
            else:
                top.append(i)
            ops.append((end, i))
    return owner, own, top


def _kernels(events: list[dict]) -> tuple[bool, list[tuple[float, float, str, str]], list[tuple[float, float, str]]]:
    """(on a GPU, work (start, duration, name, owner) by kernel, busy intervals (start, duration,
    owner) of the device (GPU) or of the host's operators (CPU)), both sorted by start."""
    owner, own, top = _operators(events)
    device = [e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS]
    if device:
        launched = {events[i].get("args", {}).get("External id"): o for i, o in owner.items()}
        work = [(e["ts"], e.get("dur", 0.0), e["name"],
                 launched.get(e.get("args", {}).get("External id"), "other")) for e in device]
        busy = [(t, d, o) for t, d, _, o in work]
    else:
        work = [(events[i]["ts"], max(own[i], 0.0), events[i]["name"], owner[i]) for i in own]
        busy = [(events[i]["ts"], events[i].get("dur", 0.0), owner[i]) for i in top]
    return bool(device), sorted(work), sorted(busy)


def timing(events: list[dict], steps: int) -> dict:
    """Per-step span, busy time, gaps and kernel families of a trace of `steps` optimizer steps."""
    on_gpu, work, intervals = _kernels(events)
    fam_us: dict[str, float] = defaultdict(float)
    fam_n: dict[str, int] = defaultdict(int)
    for _, dur, name, _ in work:
        fam_us[family(name)] += dur
        fam_n[family(name)] += 1
    busy = short = 0.0
    gaps: list[float] = []
    end = None
    for start, dur, _ in intervals:
        idle = start - end if end is not None else 0.0
        if idle >= GAP_US:
            gaps.append(idle)
        elif idle > 0:
            short += idle
        busy += dur if end is None else max(0.0, start + dur - max(start, end))
        end = start + dur if end is None else max(end, start + dur)
    span = end - intervals[0][0] if intervals else 0.0
    ms = 1e-3 / steps
    return {
        "device": "gpu" if on_gpu else "cpu", "steps": steps,
        "span_ms": span * ms, "busy_ms": busy * ms, "busy_fraction": busy / span if span else 0.0,
        "gap_ms": sum(gaps) * ms, "gaps": len(gaps) / steps, "short_gap_ms": short * ms,
        "largest_gaps_ms": [g * 1e-3 for g in sorted(gaps, reverse=True)[:5]],
        "kernels": len(work) / steps,
        "families": {f: {"kernels": fam_n[f] / steps, "ms": fam_us[f] * ms}
                     for f in sorted(fam_us, key=lambda f: -fam_us[f])},
    }


def shares(events: list[dict], steps: int) -> dict[str, dict[str, float]]:
    """Per package and step: top-level operators, their host time, and the kernel time they caused."""
    owner, _, top = _operators(events)
    _, work, _ = _kernels(events)
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"ops": 0.0, "host_ms": 0.0, "kernel_ms": 0.0})
    for i in top:
        out[owner[i]]["ops"] += 1 / steps
        out[owner[i]]["host_ms"] += events[i].get("dur", 0.0) * 1e-3 / steps
    for _, dur, _, who in work:
        out[who]["kernel_ms"] += dur * 1e-3 / steps
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["kernel_ms"]))


def summarize(plain: list[dict], stacked: list[dict] | None, steps: int) -> dict:
    """`timing` of the plain trace with the `shares` of the stacked one."""
    return {**timing(plain, steps), "owners": shares(stacked, steps) if stacked else {}}


def table(summary: dict, title: str = "") -> str:
    s = summary
    what = "device" if s["device"] == "gpu" else "host operators (CPU)"
    lines = [f"{title + ': ' if title else ''}{s['steps']} profiled steps, per step: {s['span_ms']:.2f} ms from the "
             f"first to the last kernel, {what} busy {s['busy_ms']:.2f} ms ({100 * s['busy_fraction']:.0f}%), "
             f"{s['kernels']:.0f} kernels; idle {s['gap_ms']:.2f} ms in {s['gaps']:.0f} gaps >= {GAP_US:.0f} us "
             f"(largest {', '.join(f'{g:.2f}' for g in s['largest_gaps_ms']) or '-'} ms) and "
             f"{s['short_gap_ms']:.2f} ms in shorter ones",
             f"{'kernel family':<24} {'kernels':>8} {'ms/step':>9} {'share':>6}"]
    total = sum(v["ms"] for v in s["families"].values()) or 1.0
    for fam, v in s["families"].items():
        lines.append(f"{fam:<24} {v['kernels']:>8.0f} {v['ms']:>9.3f} {100 * v['ms'] / total:>5.1f}%")
    if s.get("owners"):
        lines.append(f"{'package':<24} {'ops':>8} {'host ms':>9} {'kernel ms':>10} {'share':>6}")
        total = sum(v["kernel_ms"] for v in s["owners"].values()) or 1.0
        for who, v in s["owners"].items():
            lines.append(f"{who:<24} {v['ops']:>8.0f} {v['host_ms']:>9.3f} {v['kernel_ms']:>10.3f} "
                         f"{100 * v['kernel_ms'] / total:>5.1f}%")
        lines.append("package rows: from a second pass recording Python frames; ops = top-level operators, host ms = "
                     "their host time (inflated by the recording), kernel ms = the kernel time they caused")
    return "\n".join(lines)


def record(run_step, first: int, steps: int, out: str | Path) -> dict:
    """Profile `run_step(i)` for `steps` steps from i = `first`, once without and once with Python
    frames (CPU, and CUDA where present); writes both Chrome traces beside `out` (OUT.json,
    OUT.stacks.json) and returns the summary."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    traces = []
    for n, stack in enumerate((False, True)):
        with profile(activities=activities, with_stack=stack) as prof:
            for i in range(first + n * steps, first + (n + 1) * steps):
                run_step(i)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        path = out.with_suffix(".stacks.json" if stack else ".json")
        prof.export_chrome_trace(str(path))
        traces.append(load(path))
    return summarize(traces[0], traces[1], steps)
