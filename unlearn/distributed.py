"""The only module that reads RANK / LOCAL_RANK / WORLD_SIZE; the rest asks `env.is_main`.

Launchers (deepspeed, torchrun, srun via slurm/sweep.sh) export these variables; a plain
`python launch/unlearn.py` is a world of one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from unlearn.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")


def env_from_os() -> DistEnv:
    return DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def init(env: DistEnv | None = None) -> DistEnv:
    """Start torch.distributed through DeepSpeed (nccl on GPUs, gloo on the CPU)."""
    import deepspeed  # heavy: imported only when a run starts

    env = env or env_from_os()
    # The CPU accelerator would build an unused shared-memory all-reduce op (~55 s) at first start.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        # A world of one started without a launcher: any free port, so such runs never collide.
        os.environ["MASTER_PORT"] = str(_free_port()) if env.world_size == 1 else "29500"
    os.environ.setdefault("RANK", str(env.rank))
    os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    os.environ.setdefault("WORLD_SIZE", str(env.world_size))
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    try:
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    except torch.distributed.DistNetworkError as exc:
        if "EADDRINUSE" not in str(exc):
            raise
        port = os.environ["MASTER_PORT"]
        raise UserError(f"port {port} (MASTER_PORT, where the ranks meet) is in use by another program; expected a "
                        f"free port: deepspeed --master_port N ... (make demo PORT=N; make picks a free one "
                        "itself)") from None
    global _HOST_GROUP
    if torch.cuda.is_available() and env.world_size > 1 and _HOST_GROUP is None:
        _HOST_GROUP = torch.distributed.new_group(backend="gloo")  # collective: every rank, here
    return env


_HOST_GROUP = None


def host_group():
    """The process group for flags each rank's host decides (a STOP file, a preemption signal): gloo
    over host tensors, so agreeing on them waits for the other ranks' hosts and never for a GPU. On
    NCCL a flag would go to the device and its result be read back, a sync at every step boundary.
    None = the default group (already gloo on CPUs)."""
    return _HOST_GROUP


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_mean(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    """Average scalar metrics over ranks (one collective for the whole dict)."""
    if env.world_size == 1 or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if torch.cuda.is_available():
        t = t.to(env.device)
    torch.distributed.all_reduce(t)
    t /= env.world_size
    return dict(zip(keys, t.tolist()))


def all_reduce_mean_lazy(values: dict[str, torch.Tensor], env: DistEnv) -> dict[str, torch.Tensor]:
    """Average 0-dim tensors over ranks, as float64 tensors on their device: one collective, and
    nothing read on the host (`all_reduce_mean`'s arithmetic, without its wait)."""
    if env.world_size == 1 or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.stack([values[k].to(torch.float64) for k in keys])
    torch.distributed.all_reduce(t)
    t /= env.world_size
    return dict(zip(keys, t.unbind()))


def broadcast_object(obj, env: DistEnv):
    """Rank 0's value of `obj` on every rank."""
    if env.world_size == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
