"""Task Vector: fine-tune on the forget set, then subtract the difference.

Ilharco et al. 2023, "Editing Models with Task Arithmetic" (negation); MUSE's Task Vector baseline (Shi et
al. 2024, baselines/baselines/task_vector.py and baselines/unlearn.py --algo tv):

    theta_unlearned = theta - alpha (theta_ft - theta)        alpha = method.task_vector_alpha

theta is the run's model (model.name_or_path), theta_ft that model fine-tuned further on the run's forget
set with NLL (the run's optimizer, schedule and steps; MUSE: 10 epochs at lr 1e-5, alpha 5). Every
floating-point tensor of the state dict moves (MUSE skips integer ones; a tied embedding moves once);
the arithmetic is fp32. A LoRA fine-tune is merged into full weights before the difference is taken.

Folders: the fine-tune is an ordinary run, `<run.name>-finetune` (resumable); the result is the run
`<run.name>` with one checkpoint `checkpoints/step-N` (N = the fine-tune's steps): weights, tokenizer,
config.yaml, meta.json (what was subtracted from what, alpha), manifest.json and COMPLETE, so launch/evaluate.py and
the before/after table read it as any run's last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from unlearn import manifest, runs
from unlearn.config import Config
from unlearn.errors import UserError

FINETUNE_SUFFIX = "-finetune"


def negate(model: torch.nn.Module, finetuned: torch.nn.Module, alpha: float) -> int:
    """theta <- theta - alpha (theta_ft - theta) in place on `model`'s floating-point tensors, each storage
    once (tied weights); returns how many tensors moved."""
    ft = finetuned.state_dict()
    seen, moved = set(), 0
    with torch.no_grad():
        for name, theta in model.state_dict().items():
            if not theta.is_floating_point() or theta.data_ptr() in seen:
                continue
            if name not in ft or ft[name].shape != theta.shape:
                raise UserError(f"task vector: the fine-tuned model has no tensor '{name}' of shape {tuple(theta.shape)}; "
                                "expected the same architecture as model.name_or_path")
            seen.add(theta.data_ptr())
            delta = ft[name].float() - theta.float()
            theta.copy_((theta.float() - alpha * delta).to(theta.dtype))
            moved += 1
    return moved


def finetune_config(cfg: Config) -> Config:
    """The fine-tune on the forget set: NLL descent on data.forget (its format, split and cap), nothing else."""
    d = cfg.data
    data = dataclasses.replace(d, retain=d.forget, retain_format=d.forget_format, retain_split=d.forget_split,
                               retain_subset=d.forget_subset, retain_revision=d.forget_revision,
                               max_retain_samples=d.max_forget_samples)
    method = dataclasses.replace(cfg.method, forget_loss="none", retain_loss="nll", retain_weight=1.0,
                                 mismatch_weight=0.0)
    run = dataclasses.replace(cfg.run, name=cfg.run.name + FINETUNE_SUFFIX, export_dir="")
    return dataclasses.replace(cfg, data=data, method=method, run=run)


def check(cfg: Config, resume, overwrite: bool) -> None:
    """Before any training: a run name, and a result folder that may be (re)written."""
    if not cfg.run.name:
        raise UserError("launch/task_vector.py needs run.name: the fine-tune runs as <run.name>-finetune and the "
                        "result is the run <run.name>; expected run.name=<name>")
    out = Path(cfg.run.output_dir) / cfg.run.name
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        raise UserError(f"run folder '{out}' already exists; pass --overwrite to replace it (and its fine-tune), "
                        "--resume to finish it, or choose another run.name")


def write(cfg: Config, finetuned_run: Path, say=print) -> Path:
    """The task-vector model of `cfg` from the fine-tune run's last checkpoint, as run `cfg.run.name`."""
    from unlearn import model as models
    from unlearn.config_io import dump_yaml

    ft_ckpt = runs.complete_checkpoints(finetuned_run)[-1]
    out = Path(cfg.run.output_dir) / cfg.run.name
    shutil.rmtree(out, ignore_errors=True)
    plain = dataclasses.replace(cfg.model, lora=False, load_in_8bit=False)
    model = models.load_reference(plain, torch.float32)
    finetuned = models.load_reference(dataclasses.replace(plain, name_or_path=str(ft_ckpt)), torch.float32)
    moved = negate(model, finetuned, cfg.method.task_vector_alpha)
    step = int(ft_ckpt.name.split("-")[1])
    ckpt = runs.step_dir(out, step)
    tmp = ckpt.parent / f".{ckpt.name}.tmp"
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    models.load_tokenizer(cfg.model).save_pretrained(tmp)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    (tmp / "config.yaml").write_text(dump_yaml(cfg))
    meta = {"step": step, "task_vector": {"base": cfg.model.name_or_path, "finetuned": str(ft_ckpt),
                                          "alpha": cfg.method.task_vector_alpha, "tensors": moved},
            "base_model": cfg.model.name_or_path, "dtype": "float32", "lora": False,
            "versions": models.library_versions(), "git_commit": runs.git_commit(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    manifest.write(tmp)  # checksums, as every checkpoint carries
    (tmp / runs.COMPLETE).write_text(f"{step}\n")
    tmp.rename(ckpt)
    say(f"task vector: {cfg.model.name_or_path} - {cfg.method.task_vector_alpha} x ({ft_ckpt} - it) -> {ckpt}")
    return out


def run(cfg: Config, ds_config: str, ds_patch, *, resume, overwrite: bool) -> Path:
    """Fine-tune on the forget set (all ranks), then write the task-vector run (rank 0); its folder."""
    from unlearn.distributed import barrier, env_from_os
    from unlearn.train.loop import train

    check(cfg, resume, overwrite)
    ft_run = train(finetune_config(cfg), ds_config, ds_patch, resume=resume, overwrite=overwrite)
    out = Path(cfg.run.output_dir) / cfg.run.name
    if env_from_os().is_main:
        write(cfg, ft_run)
    barrier()
    return out
