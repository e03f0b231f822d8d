"""Several grid points on one GPU (cluster profile key `runs_per_gpu: K`).

A run at the paper's batch leaves most of an H100 idle (issue 30: OPT-1.3b at batch 2 uses a few
GiB and a few % of its FLOPs), so a sweep can place K grid points in one allocation: array task i
runs points iK .. iK + K - 1 as K single-rank training processes at once on the task's GPU (each
its own rendezvous port), and the array has ceil(points / K) tasks. tasks.txt then holds the K run
names of task i on line i + 1, and evals.tsv names each checkpoint's task, so its eval job waits
for the task that trains it.

Before anything is submitted, K x (memory one run needs) must fit the GPU: `footprint` in the
profile is that memory, measured, as GiB or as a footprint file a run wrote
(runs/<name>/footprint.json: its peak, see unlearn.train.rundir.write_footprint) or
`launch/bench.py`'s reserved GPU memory for the run's model and variant.
"""

from __future__ import annotations

import json
from pathlib import Path

from unlearn.errors import UserError


def footprint_gib(spec: str, base: Path) -> tuple[float, str]:
    """(GiB, where it came from) of a profile's `footprint`: a number, or a footprint.json (relative
    paths from `base`, the checkout)."""
    try:
        return float(spec), "profile"
    except ValueError:
        pass
    path = Path(spec) if Path(spec).is_absolute() else base / spec
    try:
        return float(json.loads(path.read_text())["peak_gib"]), str(path)
    except FileNotFoundError:
        raise UserError(f"cluster profile footprint '{spec}' not found; expected GiB or a footprint.json "
                        "that a run wrote (runs/<name>/footprint.json)") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"cluster profile footprint '{path}' has no number 'peak_gib'; expected the "
                        "footprint.json a run wrote") from None


def check(profile, where: str, base: Path) -> None:
    """Refuse a profile whose `runs_per_gpu` runs do not fit one GPU, or cannot share one."""
    k = profile.runs_per_gpu
    if k <= 1:
        return
    res = profile.train
    if res.nodes != 1 or res.tasks_per_node != 1 or res.gpus_per_node > 1:
        raise UserError(f"cluster profile '{where}': runs_per_gpu={k} shares one GPU between single-rank runs; "
                        f"expected train.nodes, train.tasks_per_node and train.gpus_per_node at most 1 (got "
                        f"{res.nodes}, {res.tasks_per_node}, {res.gpus_per_node})")
    if profile.gpu_memory_gib <= 0 or not profile.footprint:
        raise UserError(f"cluster profile '{where}': runs_per_gpu={k} needs gpu_memory_gib (one GPU's memory) "
                        "and footprint (one run's measured peak: GiB or a runs/<name>/footprint.json)")
    need, source = footprint_gib(profile.footprint, base)
    if k * need > profile.gpu_memory_gib:
        fits = int(profile.gpu_memory_gib // need) if need > 0 else k
        raise UserError(f"cluster profile '{where}': runs_per_gpu={k} x footprint {need:.2f} GiB ({source}) = "
                        f"{k * need:.2f} GiB > gpu_memory_gib={profile.gpu_memory_gib:g}; expected "
                        f"runs_per_gpu <= {fits}")


def groups(names: list[str], k: int) -> list[list[str]]:
    """The run names of each array task: consecutive groups of `k` (the last may be smaller)."""
    k = max(1, k)
    return [names[i:i + k] for i in range(0, len(names), k)]
