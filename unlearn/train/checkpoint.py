"""Self-describing, atomic checkpoints: runs/<name>/checkpoints/step-XXXXXX/.

Each folder holds the weights as a Hugging Face folder (full model, or the LoRA adapter), the
tokenizer, the resolved `config.yaml`, `meta.json` (step, world size, ZeRO stage, dtype, versions,
git commit, whether the weights are finite), the DeepSpeed engine state for exact resume under
`engine/`, `manifest.json` (every file's size and checksum: `unlearn.manifest`) and a `COMPLETE`
marker written last. Everything is written into `.step-XXXXXX.tmp` and renamed at the end, so a crash
in the middle of a save never leaves a folder that looks finished, nor touches the previous one; a
save that fails removes its `.tmp` (a full disk says so in one line: `unlearn.train.storage`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from unlearn import distributed, manifest
from unlearn.config import Config
from unlearn.config_io import dump_yaml
from unlearn.distributed import DistEnv
from unlearn.errors import UserError
from unlearn.model import is_peft, library_versions
from unlearn.runs import COMPLETE, complete_checkpoints, git_commit, removable, require_complete, step_dir
from unlearn.train import storage

ENGINE_DIR = manifest.ENGINE_DIR
ENGINE_TAG = "state"


def _gathered(engine):
    """Full parameters on every rank inside the block (ZeRO-3 shards them otherwise)."""
    import contextlib

    if engine.zero_optimization_stage() == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


def save_weights(engine, tokenizer, out: Path, env: DistEnv) -> bool:
    """Write the model (or LoRA adapter) as a Hugging Face folder; collective under ZeRO-3. Returns
    whether every weight is finite (on rank 0; True elsewhere)."""
    module = engine.module
    finite = True
    with _gathered(engine):
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if is_peft(module):
                module.save_pretrained(out)
            else:
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                module.save_pretrained(out, state_dict=state)
            tokenizer.save_pretrained(out)
            # one host sync per save: a divergence stop names only checkpoints with finite weights
            finite = bool(torch.stack([torch.isfinite(p).all() for p in module.parameters()]).all())
    return finite


def _meta(cfg: Config, engine, env: DistEnv, step: int, extra: dict[str, Any], finite: bool) -> dict[str, Any]:
    return {
        "step": step,
        "weights_finite": finite,
        **state_layout(engine, env),
        "dtype": str(next(engine.module.parameters()).dtype).replace("torch.", ""),
        "lora": is_peft(engine.module),
        "cpu_threads": torch.get_num_threads(),  # CPU results are reproducible at a fixed count
        "optimizer_step": getattr(engine, "zero_step", "deepspeed"),  # unlearn.train.zero_step
        # train.compile: the decoder layers that ran through torch.compile (read off the modules)
        "compiled_layers": sum(getattr(m, "_compiled_call_impl", None) is not None for m in engine.module.modules()),
        "base_model": cfg.model.name_or_path,
        "versions": library_versions(),
        "git_commit": git_commit(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }


def save(engine, tokenizer, cfg: Config, run_dir: Path, step: int, env: DistEnv,
         client_state: dict[str, Any], engine_state: bool = True, rank_state: dict[str, Any] | None = None) -> Path:
    """Atomically write checkpoint `step` (all ranks must call this). `rank_state`: this rank's own
    tensors for resume beside DeepSpeed's (e.g. the inactive phase's optimizer moments). Raises
    NoSpace, before writing, when the disk has less room than the last checkpoint took."""
    final = step_dir(run_dir, step)
    tmp = final.parent / f".{final.name}.tmp"
    storage.check_room(run_dir, step)
    try:
        if env.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        distributed.barrier()
        finite = save_weights(engine, tokenizer, tmp, env)
        if engine_state:
            engine.save_checkpoint(str(tmp / ENGINE_DIR), tag=ENGINE_TAG, client_state=client_state,
                                   save_latest=False)
            torch.save(_rng_state(), tmp / ENGINE_DIR / f"rng_rank{env.rank}.pt")
            if rank_state:
                torch.save(rank_state, tmp / ENGINE_DIR / f"state_rank{env.rank}.pt")
        distributed.barrier()
        if env.is_main:
            (tmp / "config.yaml").write_text(dump_yaml(cfg))
            meta = _meta(cfg, engine, env, step, client_state, finite)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            manifest.write(tmp)
            _fsync_tree(tmp)
            (tmp / COMPLETE).write_text(f"{step}\n")
    except Exception as exc:
        full = storage.full_disk(exc, tmp, run_dir, step)
        shutil.rmtree(tmp, ignore_errors=True)  # any rank: the space it took is freed at once
        if full:
            raise full from None
        raise
    if env.is_main:
        _replace_dir(tmp, final)
    distributed.barrier()
    return final


def _replace_dir(src: Path, dest: Path) -> None:
    """Rename `src` to `dest`; an existing `dest` is moved aside first, so a crash in between
    leaves either the old folder or the new one, never neither."""
    old = dest.parent / f".{dest.name}.old"
    if dest.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(src, dest)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(dest.parent)


def remove_partial(run_dir: Path, env: DistEnv) -> None:
    """Delete the hidden `.step-*.tmp`/`.old` folders that a killed save leaves behind (rank 0)."""
    root = Path(run_dir) / "checkpoints"
    if env.is_main and root.is_dir():
        for leftover in list(root.glob(".step-*.tmp")) + list(root.glob(".step-*.old")):
            shutil.rmtree(leftover, ignore_errors=True)
    distributed.barrier()


def prune(run_dir: Path, keep_last_n: int, env: DistEnv) -> None:
    """Delete all but the newest `keep_last_n` complete checkpoints (never the newest); one that an
    evaluation is reading stays until a later prune (`runs.reading`)."""
    if not env.is_main or keep_last_n <= 0:
        return
    done = complete_checkpoints(run_dir)
    for old in done[:-max(1, keep_last_n)]:
        with removable(old) as free:
            if free:
                # Un-mark it first: a crash in the middle of rmtree must not leave a "complete" half folder.
                (old / COMPLETE).unlink()
        if free:
            shutil.rmtree(old)
        else:
            print(f"train.keep_last_n: kept {old} for now, an evaluation is reading it", file=sys.stderr,
                  flush=True)


def optimizer_name(engine) -> str:
    """The class of the optimizer under DeepSpeed's ZeRO wrapper (whose state a resume must match)."""
    opt = engine.optimizer
    return type(getattr(opt, "optimizer", opt)).__name__


def state_layout(engine, env: DistEnv) -> dict[str, Any]:
    """What the saved optimizer state's shape depends on: a resume must match every value."""
    layout = {"world_size": env.world_size, "zero_stage": engine.zero_optimization_stage(),
              "optimizer": optimizer_name(engine)}
    if layout["zero_stage"] == 3:  # one flat fp32 partition per sub-group (zero_optimization.sub_group_size)
        layout["zero3_sub_groups"] = len(engine.optimizer.fp32_partitioned_groups_flat)
    return layout


def load_for_resume(engine, ckpt: Path, env: DistEnv) -> dict[str, Any]:
    """Restore engine, optimizer, LR schedule and RNG; returns the saved client state."""
    require_complete(ckpt)
    engine_dir = ckpt / ENGINE_DIR
    if not engine_dir.is_dir():
        raise UserError(f"checkpoint '{ckpt}' has no engine state; expected one saved with "
                        "train.save_engine_state=true to resume")
    meta = json.loads((ckpt / "meta.json").read_text())
    for key, value in state_layout(engine, env).items():
        if meta.get(key, value) != value:
            raise UserError(f"checkpoint '{ckpt}' was saved with {key}={meta[key]}, this run has {key}={value}; "
                            "expected the same number of ranks, ZeRO stage, optimizer (optim.name) and ZeRO-3 "
                            "sub_group_size as the original run to resume")
    rng = engine_dir / f"rng_rank{env.rank}.pt"
    if not rng.is_file():
        raise UserError(f"checkpoint '{ckpt}' lacks {ENGINE_DIR}/{rng.name}; expected the RNG state of "
                        f"every rank (a damaged or hand-edited checkpoint?)")
    _, client = engine.load_checkpoint(str(engine_dir), tag=ENGINE_TAG, load_optimizer_states=True,
                                       load_lr_scheduler_states=True)
    if client is None:
        raise UserError(f"checkpoint '{ckpt}' engine state could not be loaded (saved with another "
                        "world size or ZeRO stage?); expected the same launch settings as the original run")
    _set_rng_state(torch.load(rng, weights_only=False))
    return client


def load_rank_state(ckpt: Path, env: DistEnv) -> dict[str, Any]:
    """This rank's `rank_state` saved with checkpoint `ckpt` ({} when none was saved)."""
    path = Path(ckpt) / ENGINE_DIR / f"state_rank{env.rank}.pt"
    return torch.load(path, weights_only=False) if path.is_file() else {}


def config_changes(ckpt: Path, cfg: Config) -> list[str]:
    """'key: old -> new' for each setting that differs from the checkpoint's config.yaml."""
    import yaml

    from unlearn.config_io import to_dict

    saved, now = _flat(yaml.safe_load((Path(ckpt) / "config.yaml").read_text()) or {}), _flat(to_dict(cfg))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)]


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def export(ckpt: Path, dest: Path) -> None:
    """Copy a checkpoint's Hugging Face files (not the engine state) to `dest`, atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ckpt, tmp, ignore=shutil.ignore_patterns(ENGINE_DIR))
    _replace_dir(tmp, dest)


def _rng_state() -> dict[str, Any]:
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _fsync_tree(root: Path) -> None:
    """Flush every file before COMPLETE is written: after a power loss the marker must not be
    on disk while the weights are not."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
