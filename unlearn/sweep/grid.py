"""Hyperparameter grids: a sweep YAML = a base run config + axes; one folder holds the whole sweep.

    name: demo-2x2                     # sweep folder name under output_dir
    output_dir: sweeps
    ds_config: ds_configs/zero2.json
    profile: slurm/profiles/local.yaml # cluster resources (see slurm/profiles/)
    base: {train: {max_steps: 4}}      # a run config, as in configs/*.yaml
    axes: {optim.lr: [1e-4, 5e-4], method.forget_loss: [ga, npo]}
    eval: {args: [--suite, utility]}   # extra arguments of launch/evaluate.py; enabled: false = no evals
    report: {forget_metric: copyright/verbatim_rouge_l, utility_metric: utility/retain_ppl}
                                       # default with --suite tofu: tofu/forget_quality vs tofu/model_utility
    search: halving                    # grid (default: every point runs to the end) | halving
    halving: {eta: 2, min_rounds: 1}   # successive halving after each eval round (unlearn.sweep.halving)
    max_retries: 2                     # retries of a crashed training task (default: the profile's)

Folder layout (`plan` writes it; launchers and `status` read it; nothing here talks to SLURM):

    <output_dir>/<name>/sweep.yaml       the resolved sweep
                        tasks.txt        run name(s) of array task i on line i+1 (K with runs_per_gpu: K)
                        evals.tsv        task index, run name, step, checkpoint folder (one eval job each)
                        jobs.txt         job ids (sbatch route; submitit_jobs.txt for launch/sweep.py)
                        configs/<run>.yaml   the full run config of each grid point
                        runs/<run>/      run folders (checkpoints/, tb/) = the TensorBoard logdir
                        halving.json     search: halving: each decided round, its ranking and cut
                        logs/            scheduler output
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import yaml

from unlearn.config import Config
from unlearn.config_io import (
    deep_merge,
    dump_yaml,
    from_dict,
    parse_overrides,
    read_yaml,
)
from unlearn.errors import UserError
from unlearn.runs import step_dir
from unlearn.sweep.spec import (
    SEARCHES,
    SWEEP_KEYS,
    SWEEP_PREFIX,
    Point,
    Sweep,
    halving_spec,
    max_retries,
    report_spec,
    select_spec,
)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read a sweep YAML; `sweep.key=value` overrides set sweep keys, `key.sub=value` patch `base`."""
    raw = read_yaml(path)
    # "sweep.output_dir=/tmp/s" -> parse as "_.output_dir=/tmp/s" and take the "_" subtree
    sweep_patch, _ = parse_overrides(["_." + o[len(SWEEP_PREFIX):] for o in overrides or []
                                      if o.startswith(SWEEP_PREFIX)])
    raw = deep_merge(raw, sweep_patch.get("_", {}))
    unknown = set(raw) - SWEEP_KEYS
    if unknown:
        raise UserError(f"sweep file '{path}': unknown key(s) {', '.join(sorted(unknown))}; "
                        f"expected {', '.join(sorted(SWEEP_KEYS))}")
    base: dict[str, Any] = {}
    for extra in raw.get("base_configs") or []:
        base = deep_merge(base, read_yaml(extra))
    base = deep_merge(base, raw.get("base") or {})
    run_patch, ds_patch = parse_overrides([o for o in overrides or [] if not o.startswith(SWEEP_PREFIX)])
    if ds_patch:
        raise UserError("ds.* overrides are not supported in sweeps; expected a ds_config file per sweep")
    base = deep_merge(base, run_patch)
    axes = raw.get("axes")
    if not isinstance(axes, dict) or not axes:
        raise UserError(f"sweep file '{path}' needs 'axes:', a mapping of config keys to value lists "
                        "(e.g. optim.lr: [1e-6, 2e-6])")
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise UserError(f"sweep axis '{key}' must be a non-empty list of values, got {values!r}")
        if key.startswith("run."):
            raise UserError(f"sweep axis '{key}': run.* keys are set by the sweep; expected a training key")
    ev = raw.get("eval") or {}
    if set(ev) - {"args", "enabled"}:
        raise UserError(f"sweep key 'eval' accepts 'args' and 'enabled', got {sorted(ev)}")
    if not isinstance(ev.get("enabled", True), bool):
        raise UserError(f"sweep key 'eval.enabled' must be true or false, got {ev['enabled']!r}")
    if ev.get("enabled", True):  # refused here, before any job is submitted, not in every eval job
        from unlearn.eval.job import check_args

        check_args([str(a) for a in ev.get("args") or ()])
    sweep = Sweep(name=_safe(str(raw.get("name") or Path(path).stem)),
                  output_dir=str(raw.get("output_dir") or "sweeps"),
                  ds_config=str(raw.get("ds_config") or "ds_configs/zero2.json"),
                  profile=str(raw.get("profile") or "slurm/profiles/local.yaml"),
                  base=base, axes=tuple((k, tuple(v)) for k, v in axes.items()),
                  eval_args=tuple(str(a) for a in ev.get("args") or ()),
                  eval_enabled=ev.get("enabled", True),
                  report=report_spec(raw.get("report"), [str(a) for a in ev.get("args") or ()]),
                  select=select_spec(raw.get("select")),
                  search=str(raw.get("search") or "grid"), halving=halving_spec(raw.get("halving")),
                  max_retries=max_retries(raw.get("max_retries")))
    pts = points(sweep)  # validate every grid point now, not in a job an hour later
    _check_search(sweep, pts)
    return sweep


def _check_search(sweep: Sweep, pts: list[Point]) -> None:
    """search: halving needs evals, the same checkpoint steps in every point, and a rule it can rank by."""
    if sweep.search not in SEARCHES:
        raise UserError(f"sweep search '{sweep.search}' is unknown; expected one of: {', '.join(SEARCHES)}")
    if sweep.search != "halving":
        return
    if not sweep.eval_enabled:
        raise UserError("sweep search: halving ranks eval results; expected eval.enabled: true")
    rounds = {tuple(checkpoint_steps(p.config)) for p in pts}
    if len(rounds) != 1:
        raise UserError("sweep search: halving needs the same eval rounds in every point; the axes vary "
                        "train.max_steps or train.save_every_n_steps (expected them fixed)")
    steps = rounds.pop()
    if len(steps) <= sweep.halving.min_rounds:
        raise UserError(f"sweep search: halving cuts after eval rounds {sweep.halving.min_rounds}..{len(steps) - 1}, "
                        f"but the runs save at steps {list(steps)} only; expected train.save_every_n_steps below "
                        f"train.max_steps (e.g. max_steps / 3) or a lower halving.min_rounds")
    sel, rep = sweep.select, sweep.report
    if sel.rule == "score" and not sel.weights:
        raise UserError("sweep search: halving with select.rule score needs select.weights (metric: weight)")
    if sel.rule != "score" and not (rep.forget_metric and rep.utility_metric):
        raise UserError(f"sweep search: halving with select.rule {sel.rule} needs report.forget_metric and "
                        "report.utility_metric")
    if sel.rule == "threshold" and sel.forget_target is None:
        raise UserError("sweep search: halving with select.rule threshold needs select.forget_target")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", text)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_name(values: dict[str, Any]) -> str:
    """`optim.lr=1e-4, method.forget_loss=ga` -> `lr=0.0001_forget_loss=ga` (last key part, unless ambiguous)."""
    last = [k.rsplit(".", 1)[-1] for k in values]
    short = {k: (s if last.count(s) == 1 else k) for k, s in zip(values, last)}
    return _safe("_".join(f"{short[k]}={_fmt(v)}" for k, v in values.items()))


def points(sweep: Sweep) -> list[Point]:
    """The cartesian product of the axes, in file order (the last axis varies fastest)."""
    keys = [k for k, _ in sweep.axes]
    out = []
    for index, combo in enumerate(itertools.product(*(v for _, v in sweep.axes))):
        values = dict(zip(keys, combo))
        name = run_name(values)
        tree = sweep.base
        for key, value in values.items():
            tree = deep_merge(tree, _nested(key, value))
        tree = deep_merge(tree, {"run": {"name": name, "output_dir": str(sweep.folder / "runs")}})
        try:
            cfg = from_dict(tree)
        except UserError as exc:
            raise UserError(f"sweep point {name}: {exc}") from None
        _check_sweepable(cfg, name)
        out.append(Point(index, name, values, cfg))
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise UserError(f"sweep axes give duplicate run names {names}; expected distinct axis values")
    return out


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    """"optim.lr", 1e-4 -> {"optim": {"lr": 1e-4}}."""
    *parents, leaf = dotted.split(".")
    tree: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        tree = {part: tree}
    return tree


def _check_sweepable(cfg: Config, name: str) -> None:
    t = cfg.train
    if t.epochs > 0:
        raise UserError(f"sweep point {name}: train.epochs={t.epochs}; sweeps need train.max_steps "
                        "(and train.epochs=0) so that eval jobs per checkpoint can be submitted up front")
    if t.keep_last_n:
        raise UserError(f"sweep point {name}: train.keep_last_n={t.keep_last_n} would delete checkpoints "
                        "before their eval job runs; expected 0")


def checkpoint_steps(cfg: Config) -> list[int]:
    """Steps at which a run saves: every save_every_n_steps below max_steps, and max_steps itself."""
    t = cfg.train
    every = t.save_every_n_steps
    steps = list(range(every, t.max_steps, every)) if every else []
    return steps + [t.max_steps]


def plan(sweep: Sweep, runs_per_task: int = 1) -> list[Point]:
    """Write the sweep folder (idempotent for the same grid; a different grid in it is refused);
    `runs_per_task` grid points share each array task (unlearn.sweep.colocate)."""
    from unlearn.sweep.colocate import groups

    folder = sweep.folder
    pts = points(sweep)
    resolved = yaml.safe_dump(sweep_dict(sweep), sort_keys=False)
    tasks = folder / "tasks.txt"
    if tasks.is_file() and (folder / "sweep.yaml").read_text() != resolved:
        raise UserError(f"sweep folder '{folder}' holds another grid or base config; expected a new "
                        "sweep name or output_dir")
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    (folder / "runs").mkdir(exist_ok=True)
    (folder / "sweep.yaml").write_text(resolved)
    for p in pts:
        (folder / "configs" / f"{p.name}.yaml").write_text(dump_yaml(p.config))
    rows = [f"{p.index // runs_per_task}\t{p.name}\t{s}\t{step_dir(folder / 'runs' / p.name, s).resolve()}\n"
            for p in pts for s in checkpoint_steps(p.config) if sweep.eval_enabled]
    (folder / "evals.tsv").write_text("".join(rows))
    # last: the folder is complete
    tasks.write_text("".join(" ".join(g) + "\n" for g in groups([p.name for p in pts], runs_per_task)))
    return pts


def sweep_dict(sweep: Sweep) -> dict[str, Any]:
    return {"name": sweep.name, "output_dir": sweep.output_dir, "ds_config": sweep.ds_config,
            "profile": sweep.profile, "base": sweep.base, "axes": {k: list(v) for k, v in sweep.axes},
            "eval": {"args": list(sweep.eval_args), "enabled": sweep.eval_enabled}, "report": dict(sweep.report.__dict__),
            "select": dict(sweep.select.__dict__),
            # only for halving, so the resolved sweep.yaml of a plain grid stays as it was
            **({"search": sweep.search, "halving": dict(sweep.halving.__dict__)} if sweep.search != "grid" else {}),
            **({"max_retries": sweep.max_retries} if sweep.max_retries is not None else {})}


def open_sweep(folder: str | Path) -> tuple[Sweep, list[Point]]:
    """A planned sweep folder -> its sweep and grid points."""
    folder = Path(folder)
    if not (folder / "tasks.txt").is_file():
        raise UserError(f"'{folder}' is not a sweep folder (no tasks.txt); expected <output_dir>/<sweep name>")
    sweep = load_sweep(folder / "sweep.yaml")
    if sweep.folder.resolve() != folder.resolve():  # the folder was moved: follow it
        sweep = Sweep(**{**sweep.__dict__, "output_dir": str(folder.parent), "name": folder.name})
    return sweep, points(sweep)
