"""Evaluate one checkpoint (or every checkpoint of a run) and record the results.

Writes `eval.json` beside the weights (metrics with n and 95% bootstrap intervals, decoding
settings, judge identity, versions) and the same scalars under `eval/<suite>/<metric>` in the
run's TensorBoard at the checkpoint's step. Suites already in eval.json are skipped unless
`force`, so re-running a job (requeue, a sweep's chained eval) does no work twice.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

from unlearn import manifest, runs
from unlearn.config import Config
from unlearn.errors import UserError
from unlearn.eval.context import Context, EvalOptions, add_option_flags, device_of, role_format

EVAL_FILE = "eval.json"


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


def read_eval(ckpt: Path) -> dict:
    return _read_json(Path(ckpt) / EVAL_FILE)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def scalars(result: dict) -> dict[str, float]:
    """`eval/<suite>/<metric>` -> value for every metric with a numeric value."""
    out = {}
    for suite, res in sorted(result.get("suites", {}).items()):
        for name, metric in sorted(res.get("metrics", {}).items()):
            value = metric.get("value") if isinstance(metric, dict) else metric
            if isinstance(value, (int, float)) and math.isfinite(value):
                out[f"eval/{suite}/{name}"] = float(value)
    return out


def metrics_table(result: dict) -> str:
    """What a person reads after an evaluation: one line per metric, with its 95% interval and n."""
    lines = [f"{result.get('checkpoint', '')} (step {result.get('step', '?')})",
             f"{'suite/metric':<44}{'value':>11} {'95% interval':>23} {'n':>6}"]
    for suite, res in sorted(result.get("suites", {}).items()):
        for name, metric in sorted(res.get("metrics", {}).items()):
            m = metric if isinstance(metric, dict) else {"value": metric}
            value = m.get("value")
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            low, high = m.get("ci_low"), m.get("ci_high")
            interval = f"[{low:.4g}, {high:.4g}]" if isinstance(low, float) and isinstance(high, float) else ""
            lines.append(f"{suite + '/' + name:<44}{value:>11.4g} {interval:>23} {m.get('n', ''):>6}")
    return "\n".join(lines)


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
    parse_suites(parsed.suite)
    from unlearn.eval.tofu_metrics import check_forget_split

    check_forget_split(parsed.tofu_forget)


def evaluate_checkpoint(ckpt: str | Path, opts: EvalOptions) -> dict:
    """Run the requested suites on one complete checkpoint; returns the (merged) eval.json content.
    Files that differ from the checkpoint's manifest are refused before anything is read. A failure
    leaves its one-line reason in eval.error beside the weights (then re-raises); a checkpoint removed
    meanwhile (train.keep_last_n) is said so, and nothing is written."""
    ckpt = Path(ckpt)
    runs.require_complete(ckpt)
    from unlearn.model import threads_hint  # torch: not needed for --help

    threads_hint()
    try:
        with runs.reading(ckpt):  # keep_last_n leaves it alone meanwhile
            manifest.verify(ckpt, engine=False)
            result = _evaluate(ckpt, opts)
    except BaseException as exc:
        if not (ckpt / runs.COMPLETE).is_file():
            raise UserError(runs.removed_message(ckpt)) from None
        if not isinstance(exc, KeyboardInterrupt):
            reason = " ".join(str(exc).split()) or type(exc).__name__
            (ckpt / ERROR_FILE).write_text(f"{type(exc).__name__}: {reason}"[:500] + "\n")
        raise
    (ckpt / ERROR_FILE).unlink(missing_ok=True)
    return result


def _evaluate(ckpt: Path, opts: EvalOptions) -> dict:
    run_dir = run_dir_of(ckpt)
    return _evaluate_model(ckpt, with_data(run_config(ckpt), opts), opts, ckpt / EVAL_FILE, step_of(ckpt),
                           (run_dir or ckpt) / "eval_cache", run_dir)


def _evaluate_model(model: Path, cfg: Config, opts: EvalOptions, out: Path, step: int, cache: Path,
                    run_dir: Path | None) -> dict:
    """The suites on `model` (a checkpoint, or a run's starting model) into `out`, merged with it."""
    previous = _read_json(out)
    wanted = opts.suites or default_suites(cfg, opts)
    todo = [s for s in wanted if opts.force or s not in previous.get("suites", {})]
    if not todo:
        print(f"{model}: already evaluated ({', '.join(wanted)}); use --force to redo", flush=True)
        return previous
    ctx = Context(model, cfg, opts, cache)
    fresh = {}
    for name in todo:
        t0 = time.time()
        print(f"{model}: {name} suite ...", flush=True)
        # options per suite too: a merged eval.json may hold suites run with different flags
        fresh[name] = {**suite_fn(name)(ctx), "seconds": round(time.time() - t0, 1),
                       "options": asdict(replace(opts, suites=(name,)))}
        if "files" in fresh[name]:  # e.g. the tofu suite's per-sample values, beside eval.json
            fresh[name]["files"] = [write_side_file(out, f, v) for f, v in fresh[name]["files"].items()]
    # re-read: another eval job may have added suites to this checkpoint while these ran
    suites = {**_read_json(out).get("suites", {}), **fresh}
    result = {
        "checkpoint": str(model), "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reference": ctx.reference_name, "device": device_of(opts),
        "decoding": {"strategy": "greedy", "max_new_tokens": opts.max_new_tokens,
                     "prefix_tokens": opts.prefix_tokens, "continuation_tokens": opts.continuation_tokens,
                     "batch_size": opts.batch_size, "dtype": opts.dtype, "prompt_template": cfg.data.prompt_template},
        "options": asdict(replace(opts, suites=tuple(todo))), "versions": versions(),
        "git_commit": runs.git_commit(), "suites": suites,
        "judge": suites.get("harmful", {}).get("info", {}).get("judge"),
    }
    result["scalars"] = scalars(result)
    write_json(out, result)
    if run_dir is not None:  # only what was measured now: earlier suites are already in TensorBoard
        log_tensorboard(run_dir, scalars({"suites": fresh}), step)
    return _read_json(out)  # as stored: lists for tuples, null for undefined values


START_FILE = "eval_start.json"
"""In a run folder: the evaluation of the model the run started from (step 0 of the run's summary)."""


def evaluate_start(run_dir: Path, opts: EvalOptions) -> dict | None:
    """The run's starting model (model.name_or_path of its config) evaluated as step 0, so the
    summary's curves begin where training began; None (with a line saying why) if it cannot load."""
    first = runs.complete_checkpoints(run_dir)[0]
    cfg = with_data(run_config(first), opts)
    try:
        return _evaluate_model(Path(cfg.model.name_or_path), cfg, opts, run_dir / START_FILE, 0,
                               run_dir / "eval_cache", run_dir)
    except UserError as exc:
        print(f"starting model not evaluated ({' '.join(str(exc).split())})", flush=True)
        return None


def _finite(value):
    """NaN/inf -> None, so eval.json is strict JSON (a metric undefined on this data reads null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(_finite(value), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file


def write_side_file(out: Path, name: str, value: dict) -> str:
    """Write `name` beside `out` (eval.json -> NAME, eval_start.json -> eval_start.NAME); its file name."""
    side = out.with_name(name if out.name == EVAL_FILE else f"{out.stem}.{name}")
    write_json(side, value)
    return side.name


def log_tensorboard(run_dir: Path, values: dict[str, float], step: int) -> None:
    from unlearn.distributed import env_from_os
    from unlearn.logger import Writer

    writer = Writer(run_dir / "tb", env_from_os())
    writer.log(values, step)
    writer.close()


def versions() -> dict[str, str]:
    import importlib.metadata as md

    from unlearn.model import library_versions

    out = library_versions()
    for pkg in ("rouge-score", "sacrebleu", "scipy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def evaluate_run(run_dir: str | Path, opts: EvalOptions) -> list[dict]:
    """Evaluate every complete checkpoint of a run (skipping evaluated ones), then summarise."""
    from unlearn.eval import summary as eval_summary

    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints").is_dir():
        raise UserError(f"run '{run_dir}' has no checkpoints/ folder; expected runs/<name> of a training run")
    ckpts = runs.complete_checkpoints(run_dir)
    if not ckpts:
        raise UserError(f"run '{run_dir}' has no complete checkpoint; expected checkpoints/step-*/COMPLETE")
    start = evaluate_start(run_dir, opts)
    results = [evaluate_checkpoint(c, opts) for c in ckpts]
    eval_summary.write(run_dir, ([start] if start else []) + results)
    return results
