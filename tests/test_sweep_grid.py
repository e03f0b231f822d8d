"""Sweep grids without SLURM: cartesian product, run names, folder layout, status, report, profiles."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from unlearn.config_io import load_config
from unlearn.errors import UserError
from unlearn.runs import COMPLETE
from unlearn.sweep.grid import checkpoint_steps, load_sweep, open_sweep, plan, points, run_name
from unlearn.sweep.profile import load_profile, sbatch_args, submitit_params
from unlearn.sweep.progress import run_status
from unlearn.sweep.report import status_table, write_report
from unlearn.sweep.select import pareto_front

ROOT = Path(__file__).resolve().parents[1]


def _grid(tmp_path: Path, **extra) -> Path:
    doc = {"name": "g", "output_dir": str(tmp_path / "sweeps"),
           "base": {"train": {"max_steps": 6, "save_every_n_steps": 2}},
           "axes": {"optim.lr": ["1e-4", 5e-4], "method.forget_loss": ["ga", "npo"], "train.seed": [0, 1, 2]},
           "report": {"forget_metric": "copyright/verbatim_rouge_l", "utility_metric": "utility/retain_ppl",
                      "utility_goal": "min"}, **extra}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_cartesian_product_names_and_configs(tmp_path):
    pts = points(load_sweep(_grid(tmp_path)))
    assert len(pts) == 2 * 2 * 3
    assert [p.index for p in pts] == list(range(12))
    assert pts[0].name == "lr=1e-4_forget_loss=ga_seed=0"
    assert pts[-1].name == "lr=0.0005_forget_loss=npo_seed=2"  # last axis varies fastest
    assert len({p.name for p in pts}) == 12
    cfg = pts[-1].config
    assert cfg.optim.lr == 5e-4 and cfg.method.forget_loss == "npo" and cfg.train.seed == 2
    assert pts[0].config.optim.lr == 1e-4  # YAML string "1e-4" coerced by the field type
    assert cfg.run.name == pts[-1].name and cfg.run.output_dir == str(tmp_path / "sweeps" / "g" / "runs")
    assert cfg.train.max_steps == 6  # from base


def test_sweep_planning_imports_no_torch():
    """Planning runs in a small SLURM job: the folder layout comes from unlearn.runs, which is torch-free."""
    code = "import sys, unlearn.sweep.grid, unlearn.sweep.profile; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_ambiguous_short_names_keep_the_full_key():
    assert run_name({"method.beta": 0.1, "optim.betas.beta": 2}) == "method.beta=0.1_optim.betas.beta=2"


def test_overrides_patch_base_and_sweep_keys(tmp_path):
    sweep = load_sweep(_grid(tmp_path), ["train.max_steps=4", f"sweep.output_dir={tmp_path / 'o'}",
                                         "sweep.eval.args=[--suite, copyright]"])
    assert sweep.folder == tmp_path / "o" / "g"
    assert sweep.eval_args == ("--suite", "copyright")
    assert all(p.config.train.max_steps == 4 for p in points(sweep))


@pytest.mark.parametrize("extra, match", [
    ({"axes": {"optim.lrr": [1]}}, "optim.lrr"),
    ({"axes": {"optim.lr": []}}, "non-empty list"),
    ({"axes": {"run.name": ["a"]}}, "run.name"),
    ({"colour": 1}, "unknown key"),
    ({"base": {"train": {"max_steps": 6, "keep_last_n": 1}}}, "keep_last_n"),
    ({"base": {"train": {"epochs": 1.0}}}, "epochs"),
    ({"report": {"forget_goal": "lower"}}, "goal"),
    ({"axes": {"train.seed": [1, "1"]}}, "duplicate run names"),
    # YAML's [--suite, copyright,utility] is three items: refused when planned, not in every eval job
    ({"eval": {"args": ["--suite", "copyright", "utility"]}}, "unrecognized arguments: utility"),
    ({"eval": {"args": ["--suite", "copyright,memory"]}}, "--suite memory unknown"),
])
def test_bad_grids_raise_user_errors(tmp_path, extra, match):
    with pytest.raises(UserError, match=match):
        load_sweep(_grid(tmp_path, **extra))


def test_checkpoint_steps(tmp_path):
    pts = points(load_sweep(_grid(tmp_path)))
    assert checkpoint_steps(pts[0].config) == [2, 4, 6]
    one = pts[0].config.__class__(train=pts[0].config.train.__class__(max_steps=5, save_every_n_steps=0))
    assert checkpoint_steps(one) == [5]


def test_plan_layout_is_idempotent_and_refuses_another_grid(tmp_path):
    sweep = load_sweep(_grid(tmp_path))
    pts = plan(sweep)
    folder = sweep.folder
    assert (folder / "tasks.txt").read_text().splitlines() == [p.name for p in pts]
    rows = [line.split("\t") for line in (folder / "evals.tsv").read_text().splitlines()]
    assert len(rows) == 12 * 3
    assert rows[1][:3] == ["0", pts[0].name, "4"] and rows[1][3].endswith(f"{pts[0].name}/checkpoints/step-000004")
    saved = yaml.safe_load((folder / "configs" / f"{pts[3].name}.yaml").read_text())
    assert saved["run"]["name"] == pts[3].name and float(saved["optim"]["lr"]) == 1e-4
    assert [p.name for p in open_sweep(folder)[1]] == [p.name for p in pts]
    plan(sweep)  # same grid again: fine (resubmitting a sweep)
    with pytest.raises(UserError, match="another grid"):
        plan(load_sweep(_grid(tmp_path), ["train.max_steps=8"]))


def _fake_checkpoint(folder: Path, name: str, step: int, metrics: dict[str, float] | None) -> None:
    ckpt = folder / "runs" / name / "checkpoints" / f"step-{step:06d}"
    ckpt.mkdir(parents=True)
    (ckpt / COMPLETE).write_text("")
    if metrics is not None:
        (ckpt / "eval.json").write_text(json.dumps({"step": step, "scalars": {f"eval/{k}": v
                                                                              for k, v in metrics.items()}}))


def test_status_report_pareto_and_hparams(tmp_path):
    sweep = load_sweep(_grid(tmp_path, axes={"optim.lr": [1e-4, 5e-4, 1e-3]}))
    pts = plan(sweep)
    f = sweep.folder
    # run 0 done: two evaluated checkpoints; run 1 half-way; run 2 never started
    _fake_checkpoint(f, pts[0].name, 2, {"copyright/verbatim_rouge_l": 0.9, "utility/retain_ppl": 10.0})
    _fake_checkpoint(f, pts[0].name, 6, {"copyright/verbatim_rouge_l": 0.2, "utility/retain_ppl": 30.0})
    _fake_checkpoint(f, pts[1].name, 2, {"copyright/verbatim_rouge_l": 0.5, "utility/retain_ppl": 12.0})
    (f / "runs" / pts[1].name / "checkpoints" / "step-000004").mkdir()  # no COMPLETE: does not count
    states = [run_status(sweep, p) for p in pts]
    assert [(s.state, s.step, s.evaluated, s.eval_step) for s in states] == [
        ("done", 6, 2, 6), ("running", 2, 1, 2), ("pending", 0, 0, 0)]
    assert states[0].latest_eval["copyright/verbatim_rouge_l"] == 0.2
    table = status_table(sweep, pts)
    assert "done" in table and "copyright/verbatim_rouge_l=0.2" in table and "pending" in table

    csv_path, png = write_report(sweep, pts)
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["run"] for r in rows] == [p.name for p in pts]
    assert [r["pareto"] for r in rows] == ["1", "1", ""]  # neither dominates the other; run 2 not evaluated
    assert png is not None and png.stat().st_size > 1000

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(f / "runs" / pts[0].name / "tb" / "hparams"))
    acc.Reload()
    assert "_hparams_/session_start_info" in acc.summary_metadata
    # HParams holds each run's chosen checkpoint (default rule pareto-knee): run 0's two checkpoints
    # (0.9, 10) and (0.2, 30) scale to (0, 1) and (1, 0), a tie that the earlier step wins
    assert acc.Scalars("eval/copyright/verbatim_rouge_l")[-1].value == pytest.approx(0.9)
    assert [r["run_choice_step"] for r in rows] == ["2", "2", ""]
    # sweep-wide: front (0.9,10) (0.5,12) (0.2,30); the knee is (0.5, 12): run 1 step 2
    best = json.loads((f / "best.json").read_text())
    assert (best["run"], best["step"], best["rule"]) == (pts[1].name, 2, "pareto-knee")
    assert [r["sweep_choice_step"] for r in rows] == ["", "2", ""]
    # run 1 evaluated again at step 5, (0.35, 13): alone, run 1's two points scale to a tie that its
    # earlier step wins; sweep-wide, (0.35, 13) is the knee. The row says both; best.json has the sweep's
    _fake_checkpoint(f, pts[1].name, 5, {"copyright/verbatim_rouge_l": 0.35, "utility/retain_ppl": 13.0})
    rows = list(csv.DictReader(write_report(sweep, pts)[0].open()))
    best = json.loads((f / "best.json").read_text())
    assert (best["run"], best["step"]) == (pts[1].name, 5)
    assert [(r["run_choice_step"], r["sweep_choice_step"]) for r in rows] == [("2", ""), ("2", "5"), ("", "")]


def test_pareto_front_directions():
    xs, ys = [0.1, 0.2, 0.3, 0.15], [5.0, 9.0, 1.0, 4.0]
    assert pareto_front(xs, ys, "min", "max") == [True, True, False, False]
    assert pareto_front(xs, ys, "max", "max") == [False, True, True, False]


def test_profiles_give_sbatch_and_submitit_options(tmp_path):
    local = load_profile(ROOT / "slurm" / "profiles" / "local.yaml")
    assert local.train.time_min >= 5  # submitit's early signal must not hit a job still starting
    args = sbatch_args(local, "train")
    assert "--partition=debug" in args and "--requeue" in args and any(a.startswith("--signal=USR1@") for a in args)
    assert {"--requeue", "--signal=USR1@60", "--open-mode=append"} <= set(sbatch_args(local, "eval"))  # evals too
    gpu = load_profile(ROOT / "slurm" / "profiles" / "example_gpu.yaml")
    params = submitit_params(gpu, "train")
    assert params["gpus_per_node"] == params["tasks_per_node"] == 4 and params["slurm_partition"] == "gpu"
    assert "--gpus-per-node=1" in sbatch_args(gpu, "eval")
    bad = tmp_path / "p.yaml"
    bad.write_text("train: {gpus: 2}\n")
    with pytest.raises(UserError, match="train.gpus"):
        load_profile(bad)


def test_shipped_sweep_files_load(monkeypatch):
    from unlearn.eval.job import parser

    monkeypatch.chdir(ROOT)  # base_configs are paths from the checkout, where sweeps are launched
    for path in sorted((ROOT / "configs" / "sweeps").glob("*.yaml")):
        sweep = load_sweep(path)
        assert len(points(sweep)) >= 4, path
        load_profile(ROOT / sweep.profile)
        args = parser().parse_args(["runs/x/checkpoints/step-000001", *sweep.eval_args])
        assert args.suite.count(",") == len(sweep.eval_args[1].split(",")) - 1, path
    paper, _ = load_config([str(ROOT / "configs" / "harmful_opt1.3b.yaml")])
    grid = load_sweep(ROOT / "configs" / "sweeps" / "harmful_opt1.3b_grid.yaml")
    for point in points(grid):  # "the paper's setting": every value the grid does not vary is the preset's
        for section in ("model", "data", "method", "optim", "train"):
            mine, theirs = getattr(point.config, section), getattr(paper, section)
            for key in mine.__dataclass_fields__:
                if f"{section}.{key}" not in dict(grid.axes) and key != "save_every_n_steps":
                    assert getattr(mine, key) == getattr(theirs, key), (point.name, section, key)


def test_plan_shell_and_status_cli(tmp_path):
    grid = _grid(tmp_path)
    out = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--plan-shell", str(grid)],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert f"SWEEP_DIR={tmp_path / 'sweeps' / 'g'}" in out and "N_TASKS=12" in out
    status = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--status",
                             str(tmp_path / "sweeps" / "g")], capture_output=True, text=True, cwd=ROOT)
    assert status.returncode == 0 and status.stdout.count("pending") == 12
    bad = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--status", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "tasks.txt" in bad.stderr
    no_ds = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--plan-shell", str(grid),
                            "sweep.ds_config=ds_configs/nope.json"], capture_output=True, text=True, cwd=ROOT)
    assert no_ds.returncode == 2 and "ds_configs/nope.json" in no_ds.stderr


@pytest.mark.slow
def test_local_executor_runs_train_eval_report(tmp_path, demo_dir):
    """`--executor local` (no SLURM): the run, then its checkpoint's eval, then the report."""
    grid = tmp_path / "one.yaml"
    grid.write_text(yaml.safe_dump({"name": "loc", "output_dir": str(tmp_path / "s"),
                                    "base": {"train": {"max_steps": 2, "micro_batch_size": 2,
                                                       "global_batch_size": 2}},
                                    "axes": {"method.forget_loss": ["ga"]},
                                    "eval": {"args": ["--suite", "copyright", "--limit", "2"]},
                                    "report": {"forget_metric": "copyright/verbatim_rouge_l",
                                               "utility_metric": "copyright/verbatim_bleu"}}))
    out = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), str(grid), "--executor", "local",
                          f"model.name_or_path={demo_dir / 'init'}", f"data.forget={demo_dir / 'forget.txt'}",
                          f"data.retain={demo_dir / 'retain.txt'}"], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    folder = tmp_path / "s" / "loc"
    result = json.loads((folder / "runs" / "forget_loss=ga" / "checkpoints" / "step-000002" / "eval.json").read_text())
    assert result["step"] == 2 and "copyright/verbatim_rouge_l" in {k.removeprefix("eval/") for k in result["scalars"]}
    rows = list(csv.DictReader((folder / "report.csv").open()))
    assert rows[0]["state"] == "done" and rows[0]["pareto"] == "1"
    assert (folder / "report.png").is_file()


def test_a_failed_eval_shows_in_status_report_and_exit_codes(tmp_path, demo_dir):
    """A real evaluate.py failure (the checkpoint's retain data is gone) leaves eval.error; --status
    names it and exits 1, --report exits 2; a later successful eval clears it."""
    from tests.test_eval_job import make_checkpoint

    sweep = load_sweep(_grid(tmp_path, axes={"optim.lr": [1e-4, 5e-4]}))
    pts = plan(sweep)
    run_dir = sweep.folder / "runs" / pts[0].name
    ckpt = make_checkpoint(run_dir, 2, demo_dir)
    retain = tmp_path / "retain.txt"
    retain.write_text((demo_dir / "retain.txt").read_text())
    cli = [sys.executable, str(ROOT / "launch" / "evaluate.py"), str(ckpt), "--suite", "utility",
           "--truthfulqa", "none", "--normal_prompts", str(retain), "--max_new_tokens", "4", "--limit", "4"]
    retain.unlink()
    failed = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
    assert failed.returncode == 2 and (ckpt / "eval.error").is_file()
    reason = (ckpt / "eval.error").read_text().strip()
    assert reason.startswith("UserError: ") and str(retain) in reason
    status = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--status", str(sweep.folder)],
                            capture_output=True, text=True, cwd=ROOT)
    assert status.returncode == 1 and "evals 0/1 (1 FAILED)" in status.stdout
    assert f"{pts[0].name} step 2: {reason}" in status.stdout
    report = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--report", str(sweep.folder)],
                            capture_output=True, text=True, cwd=ROOT)
    assert report.returncode == 2 and "1 eval(s) failed" in report.stderr and (sweep.folder / "report.csv").is_file()
    retain.write_text((demo_dir / "retain.txt").read_text())
    ok = subprocess.run(cli, capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and not (ckpt / "eval.error").exists()
    saved = json.loads((ckpt / "eval.json").read_text())["suites"]["utility"]["metrics"]["retain_ppl"]
    line = next(x for x in ok.stdout.splitlines() if x.startswith("utility/retain_ppl "))  # the printed table
    assert line.split()[1] == f"{saved['value']:.4g}" and line.split()[-1] == str(saved["n"])
    assert "FAILED" not in status_table(sweep, pts)


def test_best_picks_the_known_winner_by_each_rule(tmp_path):
    """Constructed evals (forget: verbatim ROUGE-L, lower better; utility: retain PPL, lower better)."""
    from unlearn.sweep.select import best_for

    sweep = load_sweep(_grid(tmp_path, axes={"optim.lr": [1e-4, 5e-4, 1e-3]}))
    pts = plan(sweep)
    f, F, U = sweep.folder, "copyright/verbatim_rouge_l", "utility/retain_ppl"
    evals = {pts[0].name: [(2, 0.9, 10.0), (4, 0.5, 11.0), (6, 0.3, 12.0)],   # slow: reaches 0.35 at step 6
             pts[1].name: [(2, 0.6, 11.0), (4, 0.3, 14.0), (6, 0.1, 30.0)],   # fast, costs utility
             pts[2].name: [(2, 0.8, 10.5), (4, 0.7, 10.6)]}
    for run, rows in evals.items():
        for step, rouge, ppl in rows:
            _fake_checkpoint(f, run, step, {F: rouge, U: ppl})
    # threshold: first per run with ROUGE <= 0.35 and PPL <= 15: run0 step 6 (12.0), run1 step 4 (14.0) -> run0
    got = best_for(f, "threshold", ["forget_target=0.35", "utility_bound=15"])
    assert (got["run"], got["step"]) == (pts[0].name, 6) and json.loads((f / "best.json").read_text()) == got
    # score = -10 x ROUGE - 0.1 x PPL: 0.9/10 -10, 0.5/11 -6.1, 0.3/12 -4.2, 0.6/11 -7.1, 0.3/14 -4.4,
    # 0.1/30 -4.0, 0.8/10.5 -9.05, 0.7/10.6 -8.06 -> run1 step 6
    got = best_for(f, "score", ["weights=copyright/verbatim_rouge_l:-10,utility/retain_ppl:-0.1"])
    assert (got["run"], got["step"]) == (pts[1].name, 6)
    # front (both lower better): (0.9,10) (0.5,11) (0.3,12) (0.1,30) [(0.8,10.5) dominated? 10.5>10, 0.8<0.9: on]
    # scaled x = (-r + 0.9)/0.8, y = (-p + 30)/20; ends (0.1,30) -> (1, 0) and (0.9,10) -> (0, 1);
    # distance from x + y = 1 is largest for (0.3, 12): (0.75 + 0.9 - 1) / sqrt 2
    got = best_for(f, "pareto-knee", [])
    assert (got["run"], got["step"]) == (pts[0].name, 6) and got["rule"] == "pareto-knee"
    with pytest.raises(UserError, match="no checkpoint reaches copyright/verbatim_rouge_l <= 0.05"):
        best_for(f, "threshold", ["forget_target=0.05"])
    # one run folder, metrics named by words (no grid): threshold inside run 1 only
    got = best_for(f / "runs" / pts[1].name, "threshold", [f"forget_metric={F}", f"utility_metric={U}",
                                                           "utility_goal=min", "forget_target=0.5"])
    assert (got["run"], got["step"]) == (pts[1].name, 4)
    cli = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--best", str(f), "--rule", "score",
                          "weights=copyright/verbatim_rouge_l:-10,utility/retain_ppl:-0.1"],
                         capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 0 and cli.stdout.startswith(f"best by score: {pts[1].name} step 6")


def test_eval_states_from_sacct_and_the_checkpoint_folders(tmp_path):
    """Each planned eval's state: eval.json / eval.error win; otherwise SLURM's (sacct's lines as
    `sacct -n -P -X --format=JobName,State` prints them); a job that ended without either file failed."""
    from unlearn.sweep import queue
    from unlearn.sweep.report import eval_states, failed_evals

    sacct = ("eval-r1-2|COMPLETED\neval-r1-4|RUNNING\neval-r1-6|PENDING\neval-r2-2|TIMEOUT\n"
             "eval-r2-4|CANCELLED by 0\neval-r2-4|PENDING\nsweep-report|PENDING\neval-a-b-c-6|OUT_OF_MEMORY\n")
    assert queue.parse_sacct(sacct) == {
        ("r1", 2): ("done", "COMPLETED"), ("r1", 4): ("running", "RUNNING"), ("r1", 6): ("pending", "PENDING"),
        ("r2", 2): ("failed", "TIMEOUT"), ("r2", 4): ("pending", "PENDING"),  # requeued: the last attempt
        ("a-b-c", 6): ("failed", "OUT_OF_MEMORY")}
    assert queue.eval_state("done", ("failed", "TIMEOUT")) == ("done", "")  # eval.json is the last word
    assert queue.eval_state("waiting", ("done", "COMPLETED")) == ("failed", "job COMPLETED without eval.json")
    assert queue.eval_state("waiting", None) == ("waiting", "")
    assert queue.eval_state("none", ("done", "COMPLETED")) == ("skipped", "")  # halving stopped the run first

    sweep = load_sweep(_grid(tmp_path, axes={"optim.lr": [1e-4, 5e-4]}))  # saves at steps 2, 4, 6
    pts = plan(sweep)
    (sweep.folder / "jobs.txt").write_text("train 7\neval 8 9 10 11 12 13\nreport 14\n")
    assert queue.job_ids(sweep.folder) == ["8", "9", "10", "11", "12", "13"]
    _fake_checkpoint(sweep.folder, pts[0].name, 2, {"utility/retain_ppl": 10.0})
    for step in (4, 6):
        _fake_checkpoint(sweep.folder, pts[1].name, step, None)
    jobs = {(pts[0].name, 4): ("running", "RUNNING"), (pts[0].name, 6): ("pending", "PENDING"),
            (pts[1].name, 4): ("failed", "TIMEOUT")}
    assert eval_states(sweep, pts[0], jobs=jobs) == {2: ("done", ""), 4: ("running", ""), 6: ("pending", "")}
    assert eval_states(sweep, pts[1], jobs=jobs) == {4: ("failed", "TIMEOUT"), 6: ("waiting", "")}
    assert failed_evals(sweep, pts, jobs) == [(pts[1].name, 4, "TIMEOUT")]


def test_runs_per_gpu_groups_grid_points_into_array_tasks(tmp_path):
    """runs_per_gpu: K puts K consecutive points on each array task's line of tasks.txt, and each
    checkpoint's eval row names that task (its eval job waits for it)."""
    pts = plan(load_sweep(_grid(tmp_path)), runs_per_task=5)
    folder = tmp_path / "sweeps" / "g"
    lines = (folder / "tasks.txt").read_text().splitlines()
    assert [line.split() for line in lines] == [[p.name for p in pts[i:i + 5]] for i in (0, 5, 10)]
    rows = [line.split("\t") for line in (folder / "evals.tsv").read_text().splitlines()]
    assert len(rows) == 12 * 3 and all(int(task) == [p.name for p in pts].index(name) // 5 for task, name, *_ in rows)
    open_sweep(folder)  # the folder still reads back
    out = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--plan-shell", str(_grid(tmp_path)),
                          "--profile", "slurm/profiles/local_shared.yaml"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "N_TASKS=6" in out and "PARALLEL=2" in out  # 12 points, 2 per task


def test_runs_per_gpu_must_fit_the_gpu_before_anything_is_submitted(tmp_path):
    from unlearn.sweep.submit import load

    shipped = yaml.safe_load((ROOT / "slurm/profiles/local_shared.yaml").read_text())

    def profile(**change) -> str:
        path = tmp_path / f"p{len(list(tmp_path.glob('p*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump({**shipped, **change}))
        return str(path)

    grid = str(_grid(tmp_path))
    too_many = profile(runs_per_gpu=5)  # 5 x 1.0 GiB > 4 GiB
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--plan-shell", grid,
                           "--profile", too_many], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr == (f"error: cluster profile '{too_many}': runs_per_gpu=5 x footprint 1.00 GiB (profile) = "
                           "5.00 GiB > gpu_memory_gib=4; expected runs_per_gpu <= 4\n")
    assert not (tmp_path / "sweeps" / "g").exists()  # refused before the folder was planned
    measured = tmp_path / "footprint.json"  # what a run writes at its end (unlearn.train.rundir)
    measured.write_text(json.dumps({"peak_gib": 1.5, "measure": "reserved"}))
    assert load(grid, [], profile(runs_per_gpu=2, footprint=str(measured)))[1].runs_per_gpu == 2
    with pytest.raises(UserError, match=r"runs_per_gpu=3 x footprint 1.50 GiB \(.*footprint.json\) = 4.50 GiB"):
        load(grid, [], profile(runs_per_gpu=3, footprint=str(measured)))
    with pytest.raises(UserError, match="footprint 'nope.json' not found"):
        load(grid, [], profile(footprint="nope.json"))
    with pytest.raises(UserError, match="needs gpu_memory_gib"):
        load(grid, [], profile(gpu_memory_gib=0))
    with pytest.raises(UserError, match="single-rank runs"):
        load(grid, [], profile(train={**shipped["train"], "tasks_per_node": 2}))
    with pytest.raises(UserError, match="runs_per_gpu must be >= 1"):
        load(grid, [], profile(runs_per_gpu=0))


def test_outcome_requeues_a_stop_retries_a_crash_and_never_a_user_error(tmp_path):
    """What a training task's end means (unlearn.sweep.outcome), from the exit statuses of its ranks
    and srun: a save after a stop requeues uncounted; a crash is retried max_retries times, once per
    job incarnation however many ranks report it; exit 2 and 4 never; train.exit only at the end."""
    from unlearn.runs import TRAIN_EXIT
    from unlearn.sweep import outcome

    assert outcome.decide([0, 0], False, 0, 2) == "done"
    assert outcome.decide([137, 3], False, 2, 2) == "requeue"  # saved: the other rank was ended by srun
    assert outcome.decide([1], True, 2, 2) == "requeue"  # stopped before it could save (start-up)
    assert outcome.decide([137], False, 1, 2) == "retry"
    assert outcome.decide([137], False, 2, 2) == "failed"
    assert outcome.decide([4, 137], False, 0, 2) == "failed" and outcome.decide([2], True, 0, 2) == "failed"
    assert outcome.reason(137) == "killed by SIGKILL (exit 137)" and outcome.reason(143).startswith("killed by SIGTERM")
    assert outcome.reason(4) == "diverged (exit 4)" and outcome.reason(1) == "exit 1"

    run = tmp_path / "runs" / "a"
    asked = []
    requeue = lambda: asked.append(1) or True  # noqa: E731
    assert outcome.conclude(run, [137, 137], False, 1, "7_0 restart 0", requeue) == ("requeued", 137)
    assert outcome.conclude(run, [1], False, 1, "7_0 restart 0", requeue) == ("requeued", 1)  # another rank, same try
    assert outcome.retries(run) == ["retry 1/1: killed by SIGKILL (exit 137) (job 7_0 restart 0)"]
    assert not (run / TRAIN_EXIT).exists() and len(asked) == 2
    assert outcome.conclude(run, [137], False, 1, "7_0 restart 1", requeue) == ("failed", 137)
    assert (run / TRAIN_EXIT).read_text() == "137\n" and len(asked) == 2  # no retry left: not requeued
    assert outcome.conclude(run, [3], True, 1, "7_0 restart 2", lambda: False) == ("failed", 3)  # nobody to requeue


def test_status_reads_the_training_task_beside_the_files(tmp_path):
    """A run's state: the scheduler's word for its task first (queued after a requeue, whatever its
    files say), then the files: train.exit != 0 or a task that ended for good without the final
    checkpoint is FAILED (lost), with the retries used and the exit status in words."""
    from unlearn.runs import TRAIN_EXIT
    from unlearn.sweep import outcome
    from unlearn.sweep.queue import Task
    from unlearn.sweep.report import LOST, run_state

    sweep = load_sweep(_grid(tmp_path, axes={"optim.lr": [1e-4]}))
    pts = plan(sweep)
    run = sweep.folder / "runs" / pts[0].name
    _fake_checkpoint(sweep.folder, pts[0].name, 2, None)
    assert run_state(sweep, pts[0]) == ("running", "")  # files only: a checkpoint, not the last
    queued = Task("7_0", "PENDING", "BeginTime", ("NODE_FAIL",))
    assert run_state(sweep, pts[0], task=queued) == ("queued", "job 7_0 PENDING (BeginTime), requeued 1x (NODE_FAIL)")
    (run / outcome.RETRIES).write_text("retry 1/2: killed by SIGKILL (exit 137) (job 7_0 restart 0)\n"
                                       "retry 2/2: exit 1 (job 7_0 restart 1)\n")
    (run / TRAIN_EXIT).write_text("137\n")
    failed = Task("7_0", "FAILED", "137:0", ("REQUEUED", "REQUEUED"))
    assert run_state(sweep, pts[0], task=failed) == (
        LOST, "job 7_0 FAILED, requeued 2x (REQUEUED, REQUEUED), retried 2/2, killed by SIGKILL (exit 137)")
    assert run_state(sweep, pts[0], task=queued)[0] == "queued"  # requeued by hand: no longer lost
    (run / TRAIN_EXIT).unlink()
    assert run_state(sweep, pts[0], task=Task("7_0", "NODE_FAIL", "0:0"))[0] == LOST  # not requeued


def test_outcome_decides_each_run_of_a_shared_task_and_requeues_it_once(tmp_path):
    """runs_per_gpu: 2: each run of a task is decided from its own exit status, retries are counted per
    run, the task is requeued once whatever needs it, and a run that ended for good meanwhile is left
    out of the next incarnation (logs/.requeued-JOB) and reported from its train.exit, not as queued."""
    from unlearn.runs import TRAIN_EXIT
    from unlearn.sweep import outcome
    from unlearn.sweep.queue import Task, task_ids
    from unlearn.sweep.report import LOST, run_state

    sweep = load_sweep(_grid(tmp_path, axes={"optim.lr": [1e-4, 5e-4, 1e-3]}))
    pts = plan(sweep, runs_per_task=2)
    a, b = pts[0].name, pts[1].name
    (sweep.folder / "jobs.txt").write_text("train 7\n")
    assert task_ids(sweep.folder, 3) == ["7_0", "7_0", "7_1"]  # the 3rd point is task 1's only run
    # exits per run from the rank wrappers' lines; srun's status (or 1) for a run that left none
    assert outcome.task_exits([a, b], [f"{b} 0", f"{a} 137"], 137, 1) == {a: [137], b: [0]}
    assert outcome.task_exits([a, b], [f"{a} 3"], 0, 1) == {a: [3], b: [1]}
    assert outcome.task_exits([a], [f"{a} 3", f"{a} 3"], 3, 2) == {a: [3, 3]}  # one run, 2 ranks

    asked = []
    requeue = lambda kinds: asked.append(kinds) or True  # noqa: E731
    ends = outcome.conclude_runs(sweep.folder, {a: [137], b: [0]}, False, 1, "7_0 restart 0", requeue)
    assert ends == {a: ("requeued", 137), b: ("done", 0)} and outcome.verdict(ends) == "requeued"
    assert asked == [{"retry"}]
    assert outcome.retries(sweep.folder / "runs" / a) == ["retry 1/1: killed by SIGKILL (exit 137) (job 7_0 restart 0)"]
    assert not outcome.retries(sweep.folder / "runs" / b)
    assert not (sweep.folder / "runs" / a / TRAIN_EXIT).exists()
    assert (sweep.folder / "runs" / b / TRAIN_EXIT).read_text() == "0\n"
    assert outcome.requeued_runs(sweep.folder, "7_0") == [a]  # the next incarnation trains a only
    assert outcome.requeued_runs(sweep.folder, "7_1") is None

    ends = outcome.conclude_runs(sweep.folder, {a: [137]}, False, 1, "7_0 restart 1", requeue)
    assert ends == {a: ("failed", 137)} and outcome.verdict(ends) == "failed" and len(asked) == 1  # none left
    assert (sweep.folder / "runs" / a / TRAIN_EXIT).read_text() == "137\n"
    assert outcome.requeued_runs(sweep.folder, "7_0") is None  # ended for good: a rerun trains both

    for name in (a, b):
        (sweep.folder / "runs" / name / TRAIN_EXIT).unlink()
    ends = outcome.conclude_runs(sweep.folder, {a: [3], b: [3]}, True, 1, "7_0 restart 2", requeue)
    assert outcome.verdict(ends) == "requeued" and asked[-1] == {"requeue"} and len(asked) == 2  # once
    assert outcome.requeued_runs(sweep.folder, "7_0") is None  # both go on: nothing left out

    ends = outcome.conclude_runs(sweep.folder, {a: [3], b: [2]}, True, 1, "7_0 restart 3", requeue)
    assert ends == {a: ("requeued", 3), b: ("failed", 2)} and outcome.requeued_runs(sweep.folder, "7_0") == [a]
    queued = Task("7_0", "PENDING", "BeginTime", ("REQUEUED",))
    assert run_state(sweep, pts[1], task=queued)[0] == LOST  # b: user error, though its task is queued again
    assert run_state(sweep, pts[0], task=queued)[0] == "queued"
    assert outcome.conclude_runs(sweep.folder, {a: [3]}, True, 1, "7_0 restart 4", lambda kinds: False) == {
        a: ("failed", 3)}  # nobody to requeue
    assert outcome.requeued_runs(sweep.folder, "7_0") is None
