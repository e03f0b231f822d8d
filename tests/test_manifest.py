"""Checksummed checkpoints (unlearn.manifest) on a real run of the tiny demo model (in-process DeepSpeed,
ZeRO-2, engine state saved at steps 2, 4, 6). Faults injected on disk: 4 KiB flipped inside
model.safetensors -> launch/evaluate.py refuses it (exit 2, the file named, no eval.json), and so does
`--best`; 4 KiB flipped in one checkpoint's engine state and another's optimizer state truncated ->
--resume skips both, says why, continues from the newest intact one and re-saves bit-identical
weights; a checkpoint saved before manifests existed is read with a one-line notice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, child_env
from tests.unlearn_runs import loop_overrides, weights
from unlearn import manifest, runs
from unlearn.config_io import load_config
from unlearn.errors import UserError
from unlearn.runs import RESUME_LAST
from unlearn.train.loop import train

DS = str(ROOT / "ds_configs" / "zero2.json")
ENGINE = Path("engine") / "state"


def _config(demo_dir: Path, out: Path):
    return load_config(overrides=loop_overrides(demo_dir, out, "run.name=run", "train.max_steps=6",
                                                "train.save_every_n_steps=2", "train.log_every_n_steps=100"))


@pytest.fixture(scope="module")
def clean_run(demo_dir, dist_env, tmp_path_factory) -> Path:
    cfg, patch = _config(demo_dir, tmp_path_factory.mktemp("manifest"))
    return train(cfg, DS, patch)


@pytest.fixture
def run(clean_run, tmp_path) -> Path:
    """A copy of the clean run under tmp_path/runs/run (each test damages its own)."""
    copy = tmp_path / "runs" / "run"
    shutil.copytree(clean_run, copy)
    return copy


def flip(path: Path, size: int = 4096) -> None:
    """Invert `size` bytes in the middle of a file (its length unchanged)."""
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        chunk = fh.read(size)
        fh.seek(-len(chunk), 1)
        fh.write(bytes(b ^ 0xFF for b in chunk))


def test_every_checkpoint_lists_its_files_and_matches(clean_run):
    for ckpt in runs.complete_checkpoints(clean_run):
        listed = json.loads((ckpt / manifest.MANIFEST).read_text())["files"]
        on_disk = {p.relative_to(ckpt).as_posix(): p.stat().st_size for p in ckpt.rglob("*") if p.is_file()}
        assert {k: v["size"] for k, v in listed.items()} == {k: v for k, v in on_disk.items()
                                                             if k not in (manifest.MANIFEST, runs.COMPLETE)}
        assert (ENGINE / "zero_pp_rank_0_mp_rank_00_optim_states.pt").as_posix() in listed
        assert manifest.damage(ckpt) == ""


def test_evaluate_refuses_flipped_weights_and_writes_nothing(run):
    ckpt = runs.step_dir(run, 4)
    flip(ckpt / "model.safetensors")
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "evaluate.py"), str(ckpt), "--suite", "copyright",
                           "--limit", "2"], capture_output=True, text=True, timeout=300, env=child_env())
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert errors == [f"error: checkpoint {ckpt / 'model.safetensors'} does not match its xxh3_128 checksum from "
                      "the save (damaged bytes); expected the files as saved (use another checkpoint, or re-create "
                      "this one)"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # no eval.json, no TensorBoard scalars: only eval.error, the line a sweep's --status shows
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == sorted(before + [ckpt.relative_to(run) / "eval.error"])
    assert (ckpt / "eval.error").read_text().startswith(f"Damaged: checkpoint {ckpt / 'model.safetensors'}")


def test_resume_skips_damaged_engine_states_and_continues_from_the_newest_intact(demo_dir, run, capsys):
    saved = {step: weights(runs.step_dir(run, step)) for step in (4, 6)}
    flip(runs.step_dir(run, 6) / ENGINE / "mp_rank_00_model_states.pt")
    optim = runs.step_dir(run, 4) / ENGINE / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    size = optim.stat().st_size
    with open(optim, "r+b") as fh:
        fh.truncate(size // 2)
    capsys.readouterr()
    cfg, patch = _config(demo_dir, run.parent.parent)
    train(cfg, DS, patch, resume=RESUME_LAST)
    err = capsys.readouterr().err
    assert (f"--resume: skipped step-000006: {runs.step_dir(run, 6) / ENGINE / 'mp_rank_00_model_states.pt'} does "
            "not match its xxh3_128 checksum from the save (damaged bytes)") in err
    assert f"--resume: skipped step-000004: {optim} has {size // 2} bytes, {size} when saved (truncated" in err
    assert "--resume: continuing from step-000002, the newest intact checkpoint (skipped step-000006, step-000004)" in err
    assert f"resumed from {runs.step_dir(run, 2)} at step 2" in err and "Traceback" not in err
    for step in (4, 6):  # retrained from step 2: the same weights, bit for bit, and intact again
        again = weights(runs.step_dir(run, step))
        assert all(again[k].equal(saved[step][k]) for k in saved[step]), step
        assert manifest.damage(runs.step_dir(run, step)) == ""


def test_resume_refuses_when_no_checkpoint_is_intact(run, dist_env):
    from unlearn.train.resume import newest_intact

    for ckpt in runs.complete_checkpoints(run):
        flip(ckpt / "model.safetensors")
    with pytest.raises(UserError, match=f"--resume: no intact checkpoint in {run} .step-000006, step-000004, "
                                        "step-000002 damaged, see above.; expected one whose files match"):
        newest_intact(run, dist_env)


def test_checkpoints_saved_before_manifests_are_read_with_a_notice(run, dist_env, capsys):
    from unlearn.model import load_for_eval
    from unlearn.train.resume import newest_intact

    old = runs.step_dir(run, 6)
    (old / manifest.MANIFEST).unlink()
    capsys.readouterr()
    assert newest_intact(run, dist_env) == old
    model, _ = load_for_eval(str(old))
    err = capsys.readouterr().err
    assert err.count(f"note: {old} has no manifest.json (saved before checkpoints carried checksums): its files "
                     "are not verified") == 1  # once per folder
    assert all(v.equal(model.state_dict()[k]) for k, v in weights(old).items() if k in model.state_dict())


def test_best_refuses_a_damaged_winner(run):
    from unlearn.sweep.select import BEST_FILE, best_for

    for ckpt in runs.complete_checkpoints(run):  # eval results: the later the checkpoint, the better
        step = int(ckpt.name.split("-")[1])
        (ckpt / "eval.json").write_text(json.dumps({"scalars": {"eval/copyright/verbatim_rouge_l": 1 - step / 10}}))
    words = ["weights=copyright/verbatim_rouge_l:-1"]
    assert best_for(run, "score", words)["step"] == 6
    flip(runs.step_dir(run, 6) / "model.safetensors")
    (run / BEST_FILE).unlink()
    with pytest.raises(UserError, match=f"checkpoint {runs.step_dir(run, 6) / 'model.safetensors'} does not match"):
        best_for(run, "score", words)
    assert not (run / BEST_FILE).exists()
