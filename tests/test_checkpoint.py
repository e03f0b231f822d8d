"""Atomic checkpoints on a real single-rank engine: a save that fails half-way leaves the previous
checkpoint untouched, removes its partial folder and is never taken for a finished one; one killed
half-way leaves a hidden folder that the next start cleans; a full disk (a real tmpfs) is one line
naming the folder and the size a checkpoint needs, exit 5; keep-last-N never removes the newest
complete checkpoint nor one being evaluated; resume refuses a checkpoint of another world size."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, child_env
from tests.unlearn_runs import loop_overrides
from unlearn import manifest, runs
from unlearn import model as models
from unlearn.config_io import load_config
from unlearn.errors import EXIT_NO_SPACE, NoSpace, UserError
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

    def crash(self, save_dir, *args, **kwargs):  # weights written, engine state half-written, then it fails
        real(self, save_dir, *args, **kwargs)
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(type(engine), "save_checkpoint", crash)
    with pytest.raises(OSError, match="Input/output error"):
        _save(saved, tmp_path, 4)
    assert runs.complete_checkpoints(tmp_path) == [good]
    assert _snapshot(good) == before
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002"]  # partial one removed

    def killed(self, save_dir, *args, **kwargs):  # a kill mid-save: no clean-up runs
        real(self, save_dir, *args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr(type(engine), "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        _save(saved, tmp_path, 4)
    monkeypatch.undo()
    assert runs.complete_checkpoints(tmp_path) == [good] and not runs.step_dir(tmp_path, 4).exists()
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


def test_keep_last_n_leaves_a_checkpoint_that_is_being_evaluated(saved, tmp_path, capsys):
    for step in (1, 2, 3):
        _save(saved, tmp_path, step)
    first = runs.step_dir(tmp_path, 1)
    with runs.reading(first):  # what launch/evaluate.py holds while it reads a checkpoint
        checkpoint.prune(tmp_path, 1, saved[3])
        assert [p.name for p in runs.complete_checkpoints(tmp_path)] == ["step-000001", "step-000003"]
    assert f"train.keep_last_n: kept {first} for now, an evaluation is reading it" in capsys.readouterr().err
    checkpoint.prune(tmp_path, 1, saved[3])  # the next save's prune, after the evaluation
    assert [p.name for p in runs.complete_checkpoints(tmp_path)] == ["step-000003"]


def _locked(path) -> bool:
    with open(path, "rb+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def test_evaluate_of_a_checkpoint_that_keep_last_n_or_a_hand_removes(saved, demo_dir, tmp_path):
    """launch/evaluate.py on step-1 is stopped (SIGSTOP) while it reads; keep_last_n=1's prune keeps
    the checkpoint; then it is deleted anyway (by hand; or where the filesystem has no flock): the
    evaluation says so in one line, exit 2, and writes nothing (the folder is not re-created)."""
    for step in (1, 2):
        _save(saved, tmp_path, step)
    first = runs.step_dir(tmp_path, 1)
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch" / "evaluate.py"), str(first), "--suite", "copyright",
                             "--limit", "2", "--forget", str(demo_dir / "forget.txt"),
                             "--retain", str(demo_dir / "retain.txt")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        deadline = time.time() + 120
        while not _locked(first / runs.COMPLETE):  # it holds the lock from its start to its end
            assert proc.poll() is None and time.time() < deadline, "the evaluation never locked its checkpoint"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGSTOP)
        checkpoint.prune(tmp_path, 1, saved[3])
        assert [p.name for p in runs.complete_checkpoints(tmp_path)] == ["step-000001", "step-000002"]
        shutil.rmtree(first)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {runs.removed_message(first)}"] and "Traceback" not in err
    assert not first.exists()


def test_evaluate_run_skips_a_checkpoint_keep_last_n_removed_before_its_turn(saved, demo_dir, tmp_path):
    """launch/evaluate.py --run lists step-1..3; while it evaluates step-1 (stopped there with SIGSTOP),
    keep_last_n=1's prune removes step-2 (step-1 it keeps: being read). The run says one line for step-2
    and goes on: exit 0, step-3 evaluated, the summary covers steps 0, 1 and 3.
    Before: `checkpoint '.../step-000002' not found`, exit 2, step-3 never evaluated, no summary."""
    for step in (1, 2, 3):
        _save(saved, tmp_path, step)
    first, second = runs.step_dir(tmp_path, 1), runs.step_dir(tmp_path, 2)
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch" / "evaluate.py"), "--run", str(tmp_path),
                             "--suite", "copyright", "--limit", "2", "--forget", str(demo_dir / "forget.txt"),
                             "--retain", str(demo_dir / "retain.txt")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        deadline = time.time() + 180
        while not _locked(first / runs.COMPLETE):  # its turn came: the listing is done
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGSTOP)
        checkpoint.prune(tmp_path, 1, saved[3])
        assert [p.name for p in runs.complete_checkpoints(tmp_path)] == ["step-000001", "step-000003"]
        assert not second.exists()
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "skipped step-000002: removed since the checkpoints were listed (train.keep_last_n?)" in out.splitlines()
    assert "Traceback" not in err and not second.exists()
    assert all(runs.evaluated(c) for c in (first, runs.step_dir(tmp_path, 3)))
    summary = (tmp_path / "eval_summary.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in summary[1:]] == ["0", "1", "3"], summary


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a fresh folder on a real tmpfs of that size ('60m'); unmounted at the end."""
    mounted = []

    def mount(size: str):
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(where)
        return where
    try:
        yield mount
    finally:
        for where in mounted:
            subprocess.run(["umount", "--lazy", str(where)], check=False)


def test_a_disk_that_fills_during_the_first_save(saved, small_disk):
    disk = small_disk("8m")  # less than one checkpoint (~19 MB)
    with pytest.raises(NoSpace) as info:
        _save(saved, disk, 1)
    message = " ".join(str(info.value).split())
    assert message.startswith(f"no space left on {disk / 'checkpoints'} while saving step-000001: a checkpoint of "
                              "this run needs more than the ") and "MB written before the disk filled" in message
    assert list((disk / "checkpoints").iterdir()) == []  # the partial save is gone
    assert shutil.disk_usage(disk).used < 1 << 20


def test_a_full_disk_stops_the_run_with_one_line_and_earlier_checkpoints_intact(demo_dir, small_disk, capsys):
    from unlearn.train.main import train_main

    disk = small_disk("60m")  # two checkpoints of the tiny model with both phases' AdamW moments (26 MB) fit
    argv = ["--ds_config", str(ROOT / "ds_configs" / "zero2.json"), "--no_report",
            *loop_overrides(demo_dir, disk, "run.name=full", "train.max_steps=6", "train.save_every_n_steps=1",
                            "train.log_every_n_steps=100")]
    with pytest.raises(SystemExit) as exit_info:
        train_main("test", argv)
    assert exit_info.value.code == EXIT_NO_SPACE == 5
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    root = disk / "runs" / "full" / "checkpoints"
    done = runs.complete_checkpoints(disk / "runs" / "full")
    assert [p.name for p in done] == ["step-000001", "step-000002"]
    need = sum(p.stat().st_size for p in done[-1].rglob("*") if p.is_file()) / 1e6
    assert len(errors) == 1 and errors[0].startswith(f"error: no space left on {root} for step-000003: a checkpoint "
                                                      f"of this run needs {need:.1f} MB (as step-000002), "), errors
    assert errors[0].endswith("MB free; expected free space for one more checkpoint (free some, set "
                              "train.keep_last_n, or point run.output_dir at a larger disk)") and "Traceback" not in err
    assert all(manifest.damage(p) == "" for p in done)
    assert sorted(p.name for p in root.iterdir()) == [p.name for p in done]  # no .tmp left behind
