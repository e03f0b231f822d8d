"""What a sweep run's files say, without the scheduler: its complete checkpoints, which of them are
evaluated (every suite asked for: runs.evaluated) or failed their evaluation (eval.error), and the
newest evaluation's metrics. `report.run_state` adds the scheduler's word."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearn.runs import COMPLETE, EVAL_ERROR, evaluated, step_dir
from unlearn.sweep.spec import Point, Sweep


@dataclass(frozen=True)
class RunStatus:
    name: str
    state: str
    """pending (no checkpoint yet) | running (some checkpoints) | done (final checkpoint) ."""
    step: int
    """Step of the newest complete checkpoint (0 = none)."""
    max_steps: int
    evaluated: int
    """Checkpoints whose eval.json holds every suite asked for (runs.evaluated)."""
    eval_step: int
    """Step of the newest evaluated checkpoint (0 = none), the one `latest_eval` comes from."""
    checkpoints: int
    latest_eval: dict[str, float]
    """Flattened numeric metrics of the newest evaluated checkpoint."""
    failed_evals: tuple[tuple[int, str], ...] = ()
    """(step, one-line reason) of each checkpoint whose last evaluation failed (its eval.error)."""


def run_status(sweep: Sweep, point: Point) -> RunStatus:
    run_dir = sweep.folder / "runs" / point.name
    done = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*")
                  if (p / COMPLETE).is_file())
    evals = [s for s in done if evaluated(step_dir(run_dir, s))]
    latest = flat_metrics(step_dir(run_dir, evals[-1]) / "eval.json") if evals else {}
    max_steps = point.config.train.max_steps
    step = done[-1] if done else 0
    state = "done" if step == max_steps else ("running" if done else "pending")
    failed = tuple((s, (step_dir(run_dir, s) / EVAL_ERROR).read_text().strip()) for s in done
                   if (step_dir(run_dir, s) / EVAL_ERROR).is_file())
    return RunStatus(point.name, state, step, max_steps, len(evals), evals[-1] if evals else 0, len(done), latest,
                     failed)


def flat_metrics(path: Path) -> dict[str, float]:
    """Metrics of an eval.json: its `scalars` ("eval/copyright/verbatim_rouge_l" -> "copyright/verbatim_rouge_l"),
    or else every numeric leaf as a dotted key ({"a": {"b": 1}} -> {"a.b": 1.0})."""
    import json

    data = json.loads(Path(path).read_text())
    if isinstance(data.get("scalars"), dict):
        return {k.removeprefix("eval/"): float(v) for k, v in data["scalars"].items()}
    out: dict[str, float] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            out[prefix[:-1]] = float(node)

    walk(data, "")
    return out
