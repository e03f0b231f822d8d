"""Cluster profiles (slurm/profiles/*.yaml): where and with what a sweep's jobs run.

The same file drives `sbatch slurm/sweep.sh` (as sbatch options) and `launch/sweep.py` (as
submitit parameters), so a cluster's partition, account and GPU layout live in one place, not in code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.config_io import read_yaml
from unlearn.errors import UserError


@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    """Nodes per job; a training job spans them all (one model, data parallel across nodes)."""
    tasks_per_node: int = 1
    """Ranks per node (= GPUs per node on a GPU cluster; one process per GPU)."""
    gpus_per_node: int = 0
    """GPUs requested per node (0 = CPU only)."""
    cpus_per_task: int = 1
    """CPU cores per rank (data loading, tokenization, CPU offload)."""
    mem_gb: int = 0
    """Memory per node in GB (0 = the cluster's default per CPU)."""
    time_min: int = 60
    """Wall-clock limit per job, minutes; a job is warned `signal_delay_s` before it."""


@dataclass(frozen=True)
class Profile:
    partition: str = ""
    """SLURM partition (empty = the cluster's default)."""
    account: str = ""
    """SLURM account to charge (empty = the user's default)."""
    qos: str = ""
    """SLURM quality of service (empty = default)."""
    array_parallelism: int = 0
    """Grid points running at once (0 = no limit)."""
    signal_delay_s: int = 90
    """Seconds before the time limit at which a job gets SIGUSR1: training saves, an evaluation keeps its
    finished suites; each exits 3 and its job requeues itself."""
    runs_per_gpu: int = 1
    """Grid points per training allocation, sharing its one GPU (unlearn.sweep.colocate); > 1 needs
    single-rank runs, gpu_memory_gib and footprint, and runs_per_gpu x footprint <= gpu_memory_gib."""
    gpu_memory_gib: float = 0.0
    """Memory of one GPU of the training nodes, GiB (checked against runs_per_gpu x footprint)."""
    footprint: str = ""
    """Memory one run needs, measured: GiB, or a footprint.json a run wrote (runs/<name>/footprint.json)."""
    max_retries: int = 2
    """Times a training task that failed other than by a stop (a rank killed, a traceback) is requeued
    to resume from its newest complete checkpoint; a grid's `max_retries:` overrides it. Stops
    (preemption, time limit) requeue training without limit; user errors and divergence stops never.
    An eval job (sbatch route) that is stopped is requeued up to max_retries times (an evaluation
    that never outlasts its stops would else requeue forever)."""
    train: Resources = field(default_factory=Resources)
    """Resources of one training job (one grid point)."""
    eval: Resources = field(default_factory=Resources)
    """Resources of one eval job (one checkpoint)."""


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise UserError(f"cluster profile key '{where}{key}' is unknown; expected one of {', '.join(names)}")
        if key in ("train", "eval"):
            if not isinstance(value, dict):
                raise UserError(f"cluster profile key '{where}{key}' must be a mapping of resources")
            kwargs[key] = _build(Resources, value, f"{key}.")
        elif names[key].type == "int":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"cluster profile key '{where}{key}' must be an integer >= 0, got {value!r}")
            kwargs[key] = value
        elif names[key].type == "float":
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise UserError(f"cluster profile key '{where}{key}' must be a number >= 0, got {value!r}")
            kwargs[key] = float(value)
        else:
            kwargs[key] = "" if value is None else str(value)
    return cls(**kwargs)


def load_profile(path: str | Path) -> Profile:
    profile = _build(Profile, read_yaml(path), "")
    for kind in ("train", "eval"):
        res = getattr(profile, kind)
        if res.nodes < 1 or res.tasks_per_node < 1 or res.cpus_per_task < 1 or res.time_min < 1:
            raise UserError(f"cluster profile '{path}': {kind}.nodes, tasks_per_node, cpus_per_task and "
                            "time_min must be >= 1")
    if profile.runs_per_gpu < 1:
        raise UserError(f"cluster profile '{path}': runs_per_gpu must be >= 1, got {profile.runs_per_gpu}")
    return profile


def sbatch_args(profile: Profile, kind: str) -> list[str]:
    """sbatch options for a `train` or `eval` job."""
    res: Resources = getattr(profile, kind)
    args = [f"--nodes={res.nodes}", f"--ntasks-per-node={res.tasks_per_node}",
            f"--cpus-per-task={res.cpus_per_task}", f"--time={res.time_min}"]
    args += [f"--{k}={v}" for k, v in (("partition", profile.partition), ("account", profile.account),
                                      ("qos", profile.qos)) if v]
    if res.gpus_per_node:
        args.append(f"--gpus-per-node={res.gpus_per_node}")
    if res.mem_gb:
        args.append(f"--mem={res.mem_gb}G")
    # warn before the limit; requeue keeps the job id (what the evals' and the report's afterany wait on);
    # a requeued job's log goes on in the same file
    return args + [f"--signal=USR1@{profile.signal_delay_s}", "--requeue", "--open-mode=append"]


def submitit_params(profile: Profile, kind: str) -> dict[str, Any]:
    """AutoExecutor.update_parameters(...) for a `train` or `eval` job."""
    res: Resources = getattr(profile, kind)
    params: dict[str, Any] = {"nodes": res.nodes, "tasks_per_node": res.tasks_per_node,
                              "cpus_per_task": res.cpus_per_task, "timeout_min": res.time_min}
    slurm: dict[str, Any] = {"slurm_signal_delay_s": profile.signal_delay_s}
    for key in ("partition", "account", "qos"):
        if getattr(profile, key):
            slurm[f"slurm_{key}"] = getattr(profile, key)
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb:
        params["mem_gb"] = res.mem_gb
    if profile.array_parallelism:
        slurm["slurm_array_parallelism"] = profile.array_parallelism
    return {**params, **slurm}
