"""Evaluate one checkpoint (or every checkpoint of a run) and record the results.

Every suite's inputs are checked before the first suite runs (unlearn.eval.inputs). Writes `eval.json`
beside the weights (metrics with n and 95% bootstrap intervals, decoding settings, judge identity,
versions) after every suite, and the same scalars under `eval/<suite>/<metric>` in the run's TensorBoard
at the checkpoint's step (unlearn.eval.record). Suites already in eval.json are skipped unless `force`,
so re-running a job (requeue, a sweep's chained eval, a rerun after a failure) does only what is missing.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from unlearn import manifest, runs
from unlearn.config import Config
from unlearn.errors import Stopped, UserError
from unlearn.eval import inputs, record
from unlearn.eval.context import Context, EvalOptions, add_option_flags, role_format
from unlearn.eval.record import EVAL_FILE

SUITES = ("harmful", "copyright", "utility", "privacy", "mc", "muse", "tofu")
"""Each suite is `unlearn.eval_<name>.run(ctx) -> {"metrics", "info", "examples"}`."""


def suite_fn(name: str) -> Callable[[Context], dict]:
    import importlib

    return importlib.import_module(f"unlearn.eval.{name}").run


def parse_suites(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        raise UserError(f"--suite {','.join(unknown)} unknown; expected a comma list of {', '.join(SUITES)}")
    return names


def run_config(ckpt: Path) -> Config:
    from unlearn.config_io import load_config

    path = ckpt / "config.yaml"
    if not path.is_file():
        raise UserError(f"checkpoint '{ckpt}' has no config.yaml; expected a checkpoint written by this toolkit")
    return load_config([str(path)])[0]


def with_data(cfg: Config, opts: EvalOptions) -> Config:
    """The run config with --forget/--retain in place of its own data (formats detected anew) and
    --skip_bad_rows as data.skip_bad_rows."""
    d = replace(cfg.data, skip_bad_rows=cfg.data.skip_bad_rows or opts.skip_bad_rows)
    if opts.forget:
        d = replace(d, forget=opts.forget, forget_format="auto")
    if opts.retain:
        d = replace(d, retain=opts.retain, retain_format="auto")
    return replace(cfg, data=d)


def step_of(ckpt: Path) -> int:
    meta = ckpt / "meta.json"
    if meta.is_file():
        return int(json.loads(meta.read_text()).get("step", 0))
    name = ckpt.name
    return int(name.split("-")[-1]) if name.startswith("step-") and name.split("-")[-1].isdigit() else 0


def run_dir_of(ckpt: Path) -> Path | None:
    """runs/<name> for runs/<name>/checkpoints/step-XXXXXX; None for a loose model folder."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def default_suites(cfg: Config, o: EvalOptions) -> tuple[str, ...]:
    """copyright and utility always; harmful for PKU forget sets or given prompts; privacy with a holdout."""
    out = ["copyright", "utility"]
    if o.harmful_prompts or role_format(cfg, "forget") == "pku":
        out.insert(0, "harmful")
    if o.holdout:
        out.append("privacy")
    return tuple(out)


ERROR_FILE = runs.EVAL_ERROR  # a sweep's --status and report read it


def parser(description: str = "", parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`launch/evaluate.py`'s arguments (sweeps check their eval args with the same parser)."""
    p = parser_class(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("checkpoint", nargs="?", help="a checkpoint folder (runs/<name>/checkpoints/step-XXXXXX)")
    where.add_argument("--run", help="a run folder: evaluate its starting model (step 0) and every complete "
                       "checkpoint, then summarise")
    p.add_argument("--suite", default="", help=f"comma list of {','.join(SUITES)} (default: "
                   "those the run's data supports)")
    add_option_flags(p)  # one flag per EvalOptions field, help = its docstring
    return p


class _Refusing(argparse.ArgumentParser):
    def error(self, message: str):
        raise UserError(message)


def tofu_utility_metric(tofu_data: str) -> str:
    """The eval.json key under which the TOFU suite reports model utility for data read from `tofu_data`
    (9 numbers: `model_utility`, 8 without retain_perturbed: `model_utility_8`): a sweep report's default."""
    from unlearn.eval import tofu_metrics as tm

    return f"tofu/{tm.model_utility_key(tm.data_source(tofu_data))}"


def check_args(args: list[str]) -> None:
    """Raise UserError if `launch/evaluate.py CHECKPOINT *args` would be refused (bad flag or suite)."""
    try:
        parsed = parser(parser_class=_Refusing).parse_args(["runs/x/checkpoints/step-000001", *args])
    except UserError as exc:
        raise UserError(f"eval args {' '.join(args)!r}: {exc}; expected launch/evaluate.py options, one list "
                        "item per word (quote a comma list in YAML: [--suite, \"harmful,utility\"])") from None
    from unlearn.eval.context import options_from_flags

    suites = parse_suites(parsed.suite)
    inputs.required_flags(suites, options_from_flags(parsed, suites))
    from unlearn.eval.tofu_metrics import check_forget_split  # the tofu suite's split, named or not

    check_forget_split(parsed.tofu_forget)


def evaluate_checkpoint(ckpt: str | Path, opts: EvalOptions, check: bool = True) -> dict:
    """Run the requested suites on one complete checkpoint; returns the (merged) eval.json content.
    Files that differ from the checkpoint's manifest are refused before anything is read, and the
    suites' inputs before the first suite runs (`check`; off where the caller checked them). A failure
    leaves its one-line reason in eval.error beside the weights (then re-raises), and the suites that
    finished in eval.json; a checkpoint removed meanwhile (train.keep_last_n) is said so. A stop
    (errors.Stopped) leaves no eval.error: the same command runs the suites that did not finish."""
    ckpt = Path(ckpt)
    runs.require_complete(ckpt)
    return _evaluate_locked(ckpt, opts, check)


def _evaluate_locked(ckpt: Path, opts: EvalOptions, check: bool) -> dict:
    """evaluate_checkpoint on a checkpoint seen complete, under its shared lock; raises runs.Removed
    (nothing read or written) when it went before the lock was taken."""
    from unlearn.model import threads_hint  # torch: not needed for --help

    threads_hint()
    try:
        with runs.reading(ckpt):  # keep_last_n leaves it alone meanwhile
            manifest.verify(ckpt, engine=False)
            result = _evaluate(ckpt, opts, check)
    except runs.Removed:
        raise
    except BaseException as exc:
        if not (ckpt / runs.COMPLETE).is_file():
            raise UserError(runs.removed_message(ckpt)) from None
        if not isinstance(exc, (KeyboardInterrupt, Stopped)):
            (ckpt / ERROR_FILE).write_text(f"{type(exc).__name__}: {_reason(exc)}"[:500] + "\n")
        raise
    (ckpt / ERROR_FILE).unlink(missing_ok=True)
    return result


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _evaluate(ckpt: Path, opts: EvalOptions, check: bool) -> dict:
    run_dir = run_dir_of(ckpt)
    return _evaluate_model(ckpt, with_data(run_config(ckpt), opts), opts, ckpt / EVAL_FILE, step_of(ckpt),
                           (run_dir or ckpt) / "eval_cache", run_dir, check)


def _evaluate_model(model: Path, cfg: Config, opts: EvalOptions, out: Path, step: int, cache: Path,
                    run_dir: Path | None, check: bool = True) -> dict:
    """The suites on `model` (a checkpoint, or a run's starting model) into `out`, merged with it:
    eval.json is written after every suite, so one that finished is kept when a later one fails."""
    previous = record.read_json(out)
    wanted = opts.suites or default_suites(cfg, opts)
    todo = [s for s in wanted if opts.force or s not in previous.get("suites", {})]
    ctx = Context(model, cfg, opts, cache)  # the model loads at the first suite, after the checks
    if not todo:
        if "incomplete" in previous:  # a suite asked for before is not asked for now: what is asked is done
            record.write_result(out, model, step, ctx, list(wanted), {}, None)
        print(f"{model}: already evaluated ({', '.join(wanted)}); use --force to redo", flush=True)
        return record.read_json(out)
    if check:
        inputs.check_suites(ctx, todo)
    fresh: dict[str, dict] = {}
    for i, name in enumerate(todo):
        t0 = time.time()
        print(f"{model}: {name} suite ...", flush=True)
        try:
            # options per suite too: a merged eval.json may hold suites run with different flags
            fresh[name] = {**suite_fn(name)(ctx), "seconds": round(time.time() - t0, 1),
                           "options": asdict(replace(opts, suites=(name,)))}
            if "files" in fresh[name]:  # e.g. the tofu suite's per-sample values, beside eval.json
                fresh[name]["files"] = [record.write_side_file(out, f, v) for f, v in fresh[name]["files"].items()]
        except BaseException as exc:
            fresh.pop(name, None)
            if fresh:  # what finished stays; a rerun of the same command runs only the rest
                record.write_result(out, model, step, ctx, todo, fresh, {
                    "not_run": todo[i:], "failed_suite": name, "error": _reason(exc)[:300]})
                ended = "was stopped" if isinstance(exc, Stopped) else "failed"
                print(f"{model}: kept {', '.join(fresh)} in {out.name}; {name} {ended}, so the same command "
                      f"runs only {', '.join(todo[i:])}", flush=True)
            raise
        rest = todo[i + 1:]
        record.write_result(out, model, step, ctx, todo, fresh, {"not_run": rest} if rest else None)
        if run_dir is not None:  # only what was measured now: earlier suites are already in TensorBoard
            record.log_tensorboard(run_dir, record.scalars({"suites": {name: fresh[name]}}), step)
    return record.read_json(out)  # as stored: lists for tuples, null for undefined values


START_FILE = "eval_start.json"
"""In a run folder: the evaluation of the model the run started from (step 0 of the run's summary)."""


ORACLE_FILE = "eval_oracle.json"
"""In a run folder: the evaluation of its run.oracle, a model that never saw the forget data (the
summary's `oracle` row: what unlearning aims at)."""
ORACLE_STEP = -1
"""The oracle's `step` in its eval.json: it is no point of the run (the summary labels it `oracle`)."""


def evaluate_oracle(run_dir: Path, opts: EvalOptions, check: bool = True) -> dict | None:
    """The run config's run.oracle evaluated with the run's data and options, or None when the run names
    none (or it cannot load: a line says why). Not logged to TensorBoard: it has no step."""
    cfg = with_data(run_config(runs.complete_checkpoints(run_dir)[0]), opts)
    if not cfg.run.oracle:
        return None
    try:
        return _evaluate_model(Path(cfg.run.oracle), cfg, opts, run_dir / ORACLE_FILE, ORACLE_STEP,
                               run_dir / "eval_cache", None, check)
    except UserError as exc:
        print(f"oracle not evaluated ({' '.join(str(exc).split())})", flush=True)
        return None


def evaluate_start(run_dir: Path, opts: EvalOptions, check: bool = True) -> dict | None:
    """The run's starting model (model.name_or_path of its config) evaluated as step 0, so the
    summary's curves begin where training began; None (with a line saying why) if it cannot load."""
    first = runs.complete_checkpoints(run_dir)[0]
    cfg = with_data(run_config(first), opts)
    try:
        return _evaluate_model(Path(cfg.model.name_or_path), cfg, opts, run_dir / START_FILE, 0,
                               run_dir / "eval_cache", run_dir, check)
    except UserError as exc:
        print(f"starting model not evaluated ({' '.join(str(exc).split())})", flush=True)
        return None


def evaluate_run(run_dir: str | Path, opts: EvalOptions) -> list[dict]:
    """Evaluate every complete checkpoint of a run (skipping evaluated ones) and the model it started
    from (step 0), then its run.oracle if it names one, then summarise. The suites' inputs are checked
    once, before the starting model and the first checkpoint. A checkpoint removed after the listing,
    before its turn, is skipped with a line saying so; the summary covers those evaluated."""
    from unlearn.eval import summary as eval_summary

    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise UserError(f"run '{run_dir}' has no checkpoints/ folder; expected runs/<name> of a training run")
    ckpts = runs.complete_checkpoints(run_dir)
    if not ckpts:
        raise UserError(f"run '{run_dir}' has no complete checkpoint; expected checkpoints/step-*/COMPLETE")
    cfg = with_data(run_config(ckpts[0]), opts)
    wanted = opts.suites or default_suites(cfg, opts)
    missing = [s for s in wanted if opts.force or any(s not in record.read_eval(c).get("suites", {}) for c in ckpts)]
    inputs.check_suites(Context(ckpts[0], cfg, opts, run_dir / "eval_cache"), missing)
    start = evaluate_start(run_dir, opts, check=False)
    results = []
    for ckpt in ckpts:
        try:
            results.append(_evaluate_locked(ckpt, opts, check=False))
        except runs.Removed:  # e.g. by train.keep_last_n of a run still training; the others go on
            print(f"skipped {ckpt.name}: removed since the checkpoints were listed (train.keep_last_n?)", flush=True)
    eval_summary.write(run_dir, ([start] if start else []) + results, oracle=evaluate_oracle(run_dir, opts, False))
    return results
