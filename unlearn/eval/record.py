"""What an evaluation writes: eval.json (after every suite: a suite that finished is kept when a later one
fails), its side files, and the `eval/<suite>/<metric>` scalars in the run's TensorBoard; and the table a
person reads. Until every suite asked for has finished, eval.json carries `incomplete`: the suites not
run yet and, after a failure, the one that failed and why (runs.evaluated reads it for sweeps and --best).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, replace
from pathlib import Path

from unlearn import runs
from unlearn.eval.context import device_of

EVAL_FILE = runs.EVAL_FILE


def write_result(out: Path, model: Path, step: int, ctx, todo: list[str], fresh: dict[str, dict],
                 incomplete: dict | None) -> None:
    """eval.json at `out`: the suites measured now (`fresh`) merged into those already there, with
    `incomplete` (suites of `todo` not run, the one that failed) until all of `todo` have finished."""
    opts, cfg = ctx.opts, ctx.cfg
    # re-read: another eval job may have added suites to this checkpoint while these ran
    suites = {**read_json(out).get("suites", {}), **fresh}
    result = {
        "checkpoint": str(model), "step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "reference": ctx.reference_name, "device": device_of(opts),
        "decoding": {"strategy": "greedy", "max_new_tokens": opts.max_new_tokens,
                     "prefix_tokens": opts.prefix_tokens, "continuation_tokens": opts.continuation_tokens,
                     "batch_size": opts.batch_size, "dtype": opts.dtype, "prompt_template": cfg.data.prompt_template},
        "options": asdict(replace(opts, suites=tuple(todo))), "versions": versions(),
        "git_commit": runs.git_commit(), "suites": suites,
        "judge": suites.get("harmful", {}).get("info", {}).get("judge"),
        **({"incomplete": incomplete} if incomplete else {}),
    }
    result["scalars"] = scalars(result)
    write_json(out, result)


def read_eval(ckpt: Path) -> dict:
    return read_json(Path(ckpt) / EVAL_FILE)


def read_json(path: Path) -> dict:
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
