"""Atomic checkpoints on a real single-rank engine: a save that fails half-way leaves the previous
checkpoint untouched and is never taken for a finished one; leftovers are cleaned; keep-last-N
never removes the newest complete checkpoint; resume refuses a checkpoint of another world size."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from unlearn import model as models
from unlearn import runs
from unlearn.config_io import load_config
from unlearn.errors import UserError
from unlearn.train import checkpoint
from unlearn.train import engine as engines


@pytest.fixture(scope="module")
def saved(demo_dir, dist_env):
    cfg, _ = load_config(overrides=[f"model.name_or_path={demo_dir / 'init'}", "train.micro_batch_size=2",
                                    "train.global_batch_size=2"])
    ds = engines.read_ds_config(ROOT / "ds_configs" / "zero2.json")
    engine = engines.initialize(models.load_policy(cfg.model), ds, cfg, dist_env, max_steps=10)
    return cfg, engine, models.load_tokenizer(cfg.model), dist_env


def _save(saved, run, step):
    cfg, engine, tok, env = saved
    return checkpoint.save(engine, tok, cfg, run, step, env, {"step": step, "streams": {}})


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_save_that_fails_halfway_never_damages_the_previous_one(saved, tmp_path, monkeypatch):
    good = _save(saved, tmp_path, 2)
    before = _snapshot(good)
    engine = saved[1]
    real = type(engine).save_checkpoint

    def crash(self, save_dir, *args, **kwargs):  # weights written, engine state half-written, then the disk fails
        real(self, save_dir, *args, **kwargs)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(type(engine), "save_checkpoint", crash)
    with pytest.raises(OSError):
        _save(saved, tmp_path, 4)
    monkeypatch.undo()
    assert runs.complete_checkpoints(tmp_path) == [good]
    assert _snapshot(good) == before
    assert not runs.step_dir(tmp_path, 4).exists()
    leftover = tmp_path / "checkpoints" / ".step-000004.tmp"
    assert (leftover / "model.safetensors").is_file() and not (leftover / "COMPLETE").exists()
    with pytest.raises(UserError, match="no COMPLETE marker"):
        runs.require_complete(leftover)  # what evaluation calls before reading a folder

    checkpoint.remove_partial(tmp_path, saved[3])  # what a resumed run does first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002"]
    assert (_save(saved, tmp_path, 4) / "COMPLETE").read_text() == "4\n"


def test_resaving_a_step_replaces_it_whole(saved, tmp_path):
    first = _save(saved, tmp_path, 3)
    (first / "stray.txt").write_text("from the first save")
    again = _save(saved, tmp_path, 3)
    assert again == first and not (again / "stray.txt").exists() and (again / "COMPLETE").is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000003"]


def test_keep_last_n_keeps_the_newest_complete(saved, tmp_path):
    for step in (1, 2, 3, 4):
        _save(saved, tmp_path, step)
    checkpoint.prune(tmp_path, 2, saved[3])
    assert [p.name for p in runs.complete_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    half = runs.step_dir(tmp_path, 5)  # a newer folder without COMPLETE does not count
    half.mkdir()
    checkpoint.prune(tmp_path, 1, saved[3])
    assert [p.name for p in runs.complete_checkpoints(tmp_path)] == ["step-000004"]
    checkpoint.prune(tmp_path, 0, saved[3])  # 0 = keep all
    assert [p.name for p in runs.complete_checkpoints(tmp_path)] == ["step-000004"]


def test_resume_refuses_another_world_size(saved, tmp_path):
    ckpt = _save(saved, tmp_path, 2)
    meta = json.loads((ckpt / "meta.json").read_text())
    (ckpt / "meta.json").write_text(json.dumps({**meta, "world_size": 2}))
    with pytest.raises(UserError, match="world_size=2, this run has world_size=1"):
        checkpoint.load_for_resume(saved[1], ckpt, saved[3])
    (ckpt / "meta.json").write_text(json.dumps(meta))
    (ckpt / "engine" / "rng_rank0.pt").unlink()
    with pytest.raises(UserError, match="lacks engine/rng_rank0.pt"):
        checkpoint.load_for_resume(saved[1], ckpt, saved[3])


def test_config_changes_name_the_keys(saved, tmp_path):
    ckpt = _save(saved, tmp_path, 2)
    cfg, _ = load_config(overrides=[f"model.name_or_path={saved[0].model.name_or_path}", "train.micro_batch_size=2",
                                    "train.global_batch_size=2", "optim.lr=0.5"])
    assert checkpoint.config_changes(ckpt, cfg) == [f"optim.lr: {saved[0].optim.lr!r} -> 0.5"]
