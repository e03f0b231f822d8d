"""Successive halving (grid `search: halving`): ranking and cuts on constructed eval.json files, the
grid checks, and a real run stopped by its STOP file. The cluster test is in tests/test_slurm.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from unlearn.errors import UserError
from unlearn.runs import COMPLETE, EVAL_ERROR, STOP, TRAIN_EXIT, step_dir
from unlearn.sweep import halving
from unlearn.sweep.grid import load_sweep, open_sweep, plan
from unlearn.sweep.report import status_table
from unlearn.sweep.select import Candidate
from unlearn.sweep.spec import ReportSpec, SelectSpec

F, U = "copyright/verbatim_rouge_l", "utility/retain_ppl"
LRS = [1e-5, 2e-5, 3e-5, 4e-5, 5e-5, 6e-5, 7e-5, 8e-5]


def _grid(tmp_path: Path, **extra) -> Path:
    doc = {"name": "h", "output_dir": str(tmp_path / "sweeps"), "search": "halving",
           "base": {"train": {"max_steps": 6, "save_every_n_steps": 2}}, "axes": {"optim.lr": LRS},
           "report": {"forget_metric": F, "utility_metric": U, "utility_goal": "min"},
           "select": {"rule": "score", "weights": {F: -1.0, U: -0.1}}, **extra}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _land(folder: Path, run: str, step: int, f: float | None = None, u: float | None = None,
          error: str = "") -> None:
    """A complete checkpoint of `run` at `step` with its eval.json (or eval.error)."""
    ckpt = step_dir(folder / "runs" / run, step)
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / COMPLETE).write_text("")
    if error:
        (ckpt / EVAL_ERROR).write_text(error + "\n")
    else:
        (ckpt / "eval.json").write_text(json.dumps({"step": step, "scalars": {f"eval/{F}": f, f"eval/{U}": u}}))


def test_rounds_cut_the_worst_in_order_out_of_order_failed_and_ended(tmp_path):
    sweep = load_sweep(_grid(tmp_path))
    pts = plan(sweep)
    folder, names = sweep.folder, [p.name for p in pts]
    # round 1 (step 2): score = -rouge - 0.1 x ppl, by hand:
    #   0: -.50-.10=-.60  1: -.10-.20=-.30  2: -.90-.10=-1.00  3: -.20-.10=-.30(tie, later)  4: -.40-.30=-.70
    #   5: -.05-.15=-.20  6: -.70-.05=-.75  7: -.32-.40=-.72
    # ranked: 5 (-.20), 1 (-.30), 3 (-.30), 0 (-.60), 4 (-.70), 7 (-.72), 6 (-.75), 2 (-1.00); keep ceil(8/2)=4
    metrics = [(.5, 1.0), (.1, 2.0), (.9, 1.0), (.2, 1.0), (.4, 3.0), (.05, 1.5), (.7, .5), (.32, 4.0)]
    for i in [7, 3, 0, 5, 1, 6, 2]:  # out of order, one missing: nothing is decided
        _land(folder, names[i], 2, *metrics[i])
    assert halving.decide(folder) == []
    assert not list(folder.glob(f"runs/*/{STOP}")) and not (folder / halving.RECORD).exists()
    _land(folder, names[4], 2, *metrics[4])
    (r1,) = halving.decide(folder)
    assert [row["run"] for row in r1["ranked"]] == [names[i] for i in (5, 1, 3, 0, 4, 7, 6, 2)]
    assert [row["score"] for row in r1["ranked"]] == pytest.approx([-.2, -.3, -.3, -.6, -.7, -.72, -.75, -1.0])
    assert r1["kept"] == 4 and [e["run"] for e in r1["stopped"]] == [names[i] for i in (4, 7, 6, 2)]
    stops = sorted(p.parent.name for p in folder.glob(f"runs/*/{STOP}"))
    assert stops == sorted(names[i] for i in (4, 7, 6, 2))
    assert (folder / "runs" / names[6] / STOP).read_text() == (
        f"halving round 1 (step 2): rank 7 of 8 by score, score -0.75 below the cut -0.6 ({names[0]}, rank 4)\n")
    assert halving.decide(folder) == []  # idempotent
    # round 2 (step 4), survivors 5, 1, 3, 0: 1's eval failed (goes on, unranked), 3's run ended at step 2
    # (out); 5 and 0 ranked -> keep ceil(2/2) = 1: 0 stops. A stopped point's late eval changes nothing.
    _land(folder, names[2], 4, .0, .0)
    _land(folder, names[5], 4, .3, 1.0)            # -.40
    _land(folder, names[1], 4, error="RuntimeError: out of memory")
    assert halving.decide(folder) == []            # 0 and 3 are still due
    (folder / "runs" / names[3] / TRAIN_EXIT).write_text("1\n")
    _land(folder, names[0], 4, .2, 3.0)            # -.50
    (r2,) = halving.decide(folder)
    assert [row["run"] for row in r2["ranked"]] == [names[5], names[0]]
    assert [e["run"] for e in r2["stopped"]] == [names[0]]
    assert r2["unscored"] == [{"run": names[1], "why": "eval failed: RuntimeError: out of memory"}]
    assert r2["ended"] == [{"run": names[3], "why": "run ended before step 4 (exit status 1)"}]
    assert halving.stopped_at(folder) == {names[i]: 1 for i in (4, 7, 6, 2)} | {names[0]: 2}
    # step 6 is the last round: no cut after it
    for i in (5, 1):
        _land(folder, names[i], 6, .1, 1.0)
    assert halving.decide(folder) == []
    text = status_table(*open_sweep(folder))
    assert f"{names[0]:<40} stopped " in text and "STOPPED r2" in text and text.count("STOPPED r1") == 4
    assert "successive halving (eta 2, rule score):" in text
    assert "round 1 (step 2): kept 4 of 8" in text and "round 2 (step 4): kept 1 of 2" in text
    assert f"{names[3]} out: run ended before step 4 (exit status 1)" in text
    assert f"stopped {names[0]}: halving round 2 (step 4): rank 2 of 2 by score, score -0.5 below the cut -0.4" in text


def test_min_rounds_eta_and_min_points(tmp_path):
    sweep = load_sweep(_grid(tmp_path, halving={"eta": 3, "min_rounds": 2, "min_points": 2},
                             base={"train": {"max_steps": 8, "save_every_n_steps": 2}}))
    names = [p.name for p in plan(sweep)]
    for i, n in enumerate(names):
        _land(sweep.folder, n, 2, .1 * i, 1.0)
    (r1,) = halving.decide(sweep.folder)
    assert not r1["cut"] and r1["kept"] == 8 and r1["stopped"] == []  # before min_rounds
    for i, n in enumerate(names):
        _land(sweep.folder, n, 4, .1 * i, 1.0)  # score falls with i
    (r2,) = halving.decide(sweep.folder)
    assert r2["kept"] == 3 and [e["run"] for e in r2["stopped"]] == names[3:]  # ceil(8/3)
    for n in names[:3]:
        _land(sweep.folder, n, 6, .0, 1.0)
    (r3,) = halving.decide(sweep.folder)
    assert r3["kept"] == 2 and [e["run"] for e in r3["stopped"]] == [names[2]]  # ceil(3/3)=1 < min_points


def test_ranking_threshold_and_pareto_knee_pinned():
    report = ReportSpec(forget_metric=F, utility_metric=U, utility_goal="min")

    def cands(rows):
        return [Candidate(name, 2, name, {F: f, U: u}) for name, f, u in rows]

    # threshold (rouge <= .3, ppl <= 10): qualifiers by ppl (A 5, B 8), then the rest by rouge (C .25, E .4, D .5)
    rows = [("A", .2, 5), ("B", .1, 8), ("C", .25, 12), ("D", .5, 4), ("E", .4, 3)]
    sel = SelectSpec(rule="threshold", forget_target=.3, utility_bound=10)
    assert [c.run for c in halving.ranked(cands(rows), report, sel)] == ["A", "B", "C", "E", "D"]
    # pareto-knee, by hand: front P1..P4 scaled to (1,0) (.8,.667) (.4,.889) (0,1): knee P2 (|x+y-1| .467);
    # then P3 (.289 on P1 P3 P4); then P5 joins the front (.3, .444): .256 from the line; then the two
    # ends tie on the scaled sum (1 = 1): file order, P1 before P4
    rows = [("P1", 0, 10), ("P2", .2, 4), ("P3", .6, 2), ("P4", 1, 1), ("P5", .7, 6)]
    order = halving.ranked(cands(rows), report, SelectSpec(rule="pareto-knee"))
    assert [c.run for c in order] == ["P2", "P3", "P5", "P1", "P4"]


@pytest.mark.parametrize("extra, message", [
    ({"eval": {"enabled": False}}, "expected eval.enabled: true"),
    ({"axes": {"train.max_steps": [4, 6]}}, "the axes vary train.max_steps"),
    ({"base": {"train": {"max_steps": 6, "save_every_n_steps": 0}}}, "save at steps [6] only"),
    ({"halving": {"eta": 1}}, "expected eta > 1"),
    ({"halving": {"rate": 2}}, "'halving' accepts ['eta', 'min_points', 'min_rounds']"),
    ({"search": "random"}, "search 'random' is unknown; expected one of: grid, halving"),
    ({"select": {"rule": "score"}}, "needs select.weights"),
    ({"select": {"rule": "threshold"}}, "needs select.forget_target"),
])
def test_halving_grid_errors(tmp_path, extra, message):
    with pytest.raises(UserError, match=None) as exc:
        load_sweep(_grid(tmp_path, **extra))
    assert message in str(exc.value)


def test_skip_eval_only_for_checkpoints_a_stopped_run_never_wrote(tmp_path):
    ckpt = step_dir(tmp_path / "runs" / "a", 4)
    assert halving.skip_eval(ckpt) == ""  # not stopped: evaluate (and fail loudly if it is missing)
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / STOP).write_text("halving round 1 (step 2): rank 2 of 2\n")
    assert halving.skip_eval(ckpt) == ("skipped step-000004: the run stopped before it (halving round 1 "
                                       "(step 2): rank 2 of 2)")
    ckpt.mkdir(parents=True)
    assert halving.skip_eval(ckpt) == ""  # written before the stop: evaluate it
    (tmp_path / "runs" / "a" / STOP).unlink()
    (tmp_path / "runs" / "a" / TRAIN_EXIT).write_text("1\n")
    assert halving.skip_eval(step_dir(tmp_path / "runs" / "a", 6)) == ("skipped step-000006: the run ended "
                                                                        "before it (exit status 1)")


def test_stop_file_stops_a_real_run_at_the_next_step_with_a_final_checkpoint(demo_dir, tmp_path):
    """runs/<name>/STOP: the loop stops at its next step boundary, saves, and returns normally."""
    from tests.unlearn_runs import scalars
    from unlearn.config_io import load_config
    from unlearn.runs import complete_checkpoints
    from unlearn.train.loop import train

    root = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / STOP).write_text("halving round 1 (step 2): rank 2 of 2\n")
    cfg, patch = load_config(overrides=[
        f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'forget.txt'}",
        f"data.retain={demo_dir / 'retain.txt'}", "data.max_length=32", "train.max_steps=6",
        "train.save_every_n_steps=4", "train.micro_batch_size=2", "train.global_batch_size=2",
        "train.save_engine_state=false", f"run.output_dir={tmp_path / 'runs'}", "run.name=r"])
    assert train(cfg, str(root / "ds_configs" / "zero2.json"), patch, resume="auto") == run_dir
    assert [p.name for p in complete_checkpoints(run_dir)] == ["step-000001"]
    assert len(scalars(run_dir, "forget/loss")) == 1
