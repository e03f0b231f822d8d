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


def loop_overrides(demo_dir, tmp_path, *extra) -> list[str]:
    """Text forget/retain sets, 32 tokens, batch 2, lr 1e-2 constant (override with `extra`)."""
    return [f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'forget.txt'}",
            f"data.retain={demo_dir / 'retain.txt'}", "data.max_length=32", "train.micro_batch_size=2",
            "train.global_batch_size=2", "optim.lr=1e-2", "optim.schedule=constant",
            f"run.output_dir={tmp_path / 'runs'}", *extra]


def make_loop(demo_dir, tmp_path, env, stage: int, *extra, bf16: bool = False):
    """A Loop on a real single-rank engine (ZeRO `stage`), text forget/retain sets, max_steps 10."""
    from unlearn import data
    from unlearn import model as models
    from unlearn.config_io import load_config
    from unlearn.train import engine as engines
    from unlearn.train import loop as training
    from unlearn.train.resume import State

    cfg, _ = load_config(overrides=loop_overrides(demo_dir, tmp_path, *extra))
    patch = {"zero_optimization": {"stage": stage}, **({"bf16": {"enabled": True}} if bf16 else {})}
    ds = engines.read_ds_config(ROOT / "ds_configs" / "zero2.json", patch)
    tok = models.load_tokenizer(cfg.model)
    sets = training.load_sets(cfg, tok, env)
    engine = engines.initialize(models.load_policy(cfg.model, engines.dtype_of(ds)), ds, cfg, env, max_steps=10)
    state = State(streams={n: data.BatchStream(len(getattr(sets, n)), 2, i) for i, n in enumerate(("forget", "retain"))})
    return training.Loop(cfg, engine, sets, tok, env, None, None, tmp_path, 10), state


def dpo_forget_file(demo: Path, out: Path) -> Path:
    """The demo's harmful set as a QA table whose `alternate` column is each prompt's safe response
    (for method.forget_loss=dpo with data.forget_alternate=alternate)."""
    import json

    rows = []
    for line in (demo / "harmful.jsonl").read_text().splitlines():
        r = json.loads(line)
        unsafe = 0 if not r["is_response_0_safe"] else 1
        rows.append({"question": r["prompt"], "answer": r[f"response_{unsafe}"],
                     "alternate": r[f"response_{1 - unsafe}"]})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out
