"""The main job end to end, as `make demo` runs it: fine-tune stage, unlearning, outputs on disk."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import ROOT, launch

SCALARS = {"forget/loss", "retain/loss", "grad_norm", "lr", "tokens_per_s", "padding"}


@pytest.mark.slow
def test_finetune_then_unlearn_writes_a_self_describing_run(demo_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    base = tmp_path / "base"
    ft = launch("finetune.py", ["--ds_config", str(ROOT / "ds_configs/zero2.json"),
                                "--config", str(ROOT / "configs/demo_finetune.yaml"),
                                f"model.name_or_path={demo_dir / 'init'}",
                                f"data.retain={demo_dir / 'forget.txt'},{demo_dir / 'retain.txt'}",
                                "train.max_steps=20", f"run.output_dir={runs}", f"run.export_dir={base}",
                                "--no_report"])
    assert ft.returncode == 0, ft.stderr[-3000:]
    assert (base / "COMPLETE").is_file() and (base / "config.json").is_file()

    un = launch("unlearn.py", ["--ds_config", str(ROOT / "ds_configs/zero2.json"),
                               f"model.name_or_path={base}", f"data.forget={demo_dir / 'forget.txt'}",
                               f"data.retain={demo_dir / 'retain.txt'}", "train.max_steps=6",
                               "train.save_every_n_steps=3", "train.log_every_n_steps=2",
                               f"run.output_dir={runs}", "run.name=unlearn"])
    assert un.returncode == 0, un.stderr[-3000:]
    run = runs / "unlearn"
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 6 and resolved["model"]["name_or_path"] == str(base)

    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step-000003", "step-000006"]
    for name in ckpts:
        folder = run / "checkpoints" / name
        assert {"config.yaml", "meta.json", "COMPLETE", "config.json", "model.safetensors",
                "tokenizer.json"} <= {p.name for p in folder.iterdir()}
        assert json.loads((folder / "meta.json").read_text())["step"] == int(name[-6:])

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert SCALARS <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("lr")] == [2, 4, 6]
    # the logged rate is the one each step applied (linear decay from 2e-4 over 6 steps),
    # averaged over the 2 steps of a log window
    lr = [e.value for e in acc.Scalars("lr")]
    assert lr == pytest.approx([2e-4 * (6 + 5) / 12, 2e-4 * (4 + 3) / 12, 2e-4 * (2 + 1) / 12], rel=1e-5)

    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["before"]) == {"forget_rouge_l", "forget_nll", "retain_ppl"}
    assert summary["after"]["forget_nll"] > summary["before"]["forget_nll"]  # ascent forgets
    assert "forget ROUGE-L" in un.stdout
