"""In-process single-rank runs of unlearn.train.loop.train() on the demo assets (shared by method tests)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT


def run(demo: Path, out: Path, *overrides: str, ds: str = "zero2.json", finetune: bool = False) -> Path:
    """Train on the random tiny OPT (harmful.jsonl forget, normal.jsonl retain); returns the run dir."""
    from unlearn.config import FINETUNE_DEFAULTS
    from unlearn.config_io import load_config
    from unlearn.train.loop import train

    base = [f"model.name_or_path={demo / 'init'}", f"data.forget={demo / 'harmful.jsonl'}",
            f"data.retain={demo / 'normal.jsonl'}", "data.max_length=64", "train.max_steps=3",
            "train.micro_batch_size=2", "train.global_batch_size=2", "train.log_every_n_steps=1",
            "train.save_engine_state=false", "optim.lr=1e-3", f"run.output_dir={out}", "run.name=run"]
    cfg, patch = load_config(overrides=[*base, *overrides], defaults=FINETUNE_DEFAULTS if finetune else None)
    return train(cfg, str(ROOT / "ds_configs" / ds), patch, overwrite=True)


def scalars(run_dir: Path, tag: str) -> list[float]:
    """One TensorBoard scalar series of a run, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars(tag), key=lambda e: e.step)]


def weights(folder: Path) -> dict:
    """The safetensors weights of a Hugging Face folder (model or adapter)."""
    from safetensors.torch import load_file

    files = sorted(Path(folder).glob("*.safetensors"))
    assert files, f"no weights in {folder}"
    out = {}
    for f in files:
        out.update(load_file(f))
    return out
