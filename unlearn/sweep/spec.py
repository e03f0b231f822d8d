"""What a sweep YAML says, as frozen dataclasses (Sweep, its report/select/halving parts, Point) and the
checks of each part; unlearn.sweep.grid reads the file and expands the grid."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn.config import Config
from unlearn.errors import UserError

SWEEP_KEYS = {"name", "output_dir", "ds_config", "profile", "base", "base_configs", "axes", "eval", "report",
              "select", "search", "halving", "max_retries"}
SWEEP_PREFIX = "sweep."
"""Command-line overrides under this prefix set sweep keys (sweep.output_dir=/tmp/s); others patch `base`."""


@dataclass(frozen=True)
class ReportSpec:
    forget_metric: str = ""
    """Metric of eval.json for the forget axis of the plot (e.g. copyright/verbatim_rouge_l)."""
    forget_goal: str = "min"
    """min: lower forget metric is better (memorisation, harmful rate); max: higher is better."""
    utility_metric: str = ""
    """Metric of eval.json for the utility axis (e.g. utility/truthfulqa_mc2)."""
    utility_goal: str = "max"
    """max: higher utility is better; min: lower is better (e.g. perplexity)."""


RULES = ("threshold", "pareto-knee", "score")
"""Selection rules of `launch/sweep.py --best` (unlearn.sweep.select)."""


@dataclass(frozen=True)
class SelectSpec:
    rule: str = "pareto-knee"
    """threshold | pareto-knee | score (see the module docstring)."""
    forget_target: float | None = None
    """threshold: the forget metric must reach this (<= for goal min, >= for max)."""
    utility_bound: float | None = None
    """threshold: the utility metric must stay within this (>= for goal max, <= for min); None = any."""
    weights: dict[str, float] = field(default_factory=dict)
    """score: metric -> weight; the score is the weighted sum, highest wins."""


SEARCHES = ("grid", "halving")
"""grid: every point runs to max_steps; halving: successive halving over eval rounds (unlearn.sweep.halving)."""


@dataclass(frozen=True)
class HalvingSpec:
    eta: float = 2.0
    """After a cut, the best ceil(n / eta) of the n ranked running points go on (2 = halve each round)."""
    min_rounds: int = 1
    """The first cut comes after this eval round (1 = after the first checkpoint's evals)."""
    min_points: int = 1
    """A cut never leaves fewer running points than this."""


@dataclass(frozen=True)
class Sweep:
    name: str
    output_dir: str
    ds_config: str
    profile: str
    base: dict[str, Any]
    axes: tuple[tuple[str, tuple[Any, ...]], ...]
    eval_args: tuple[str, ...] = ()
    eval_enabled: bool = True
    report: ReportSpec = field(default_factory=ReportSpec)
    select: SelectSpec = field(default_factory=SelectSpec)
    """How `launch/sweep.py --best` chooses (unlearn.sweep.select)."""
    search: str = "grid"
    """grid | halving (SEARCHES)."""
    halving: HalvingSpec = field(default_factory=HalvingSpec)
    max_retries: int | None = None
    """Retries of a training task that crashed (unlearn.sweep.outcome); None = the cluster profile's."""

    @property
    def folder(self) -> Path:
        return Path(self.output_dir) / self.name


@dataclass(frozen=True)
class Point:
    index: int
    """Array task index (0-based)."""
    name: str
    """Run name, derived from the axis values."""
    values: dict[str, Any]
    """Axis key -> value of this grid point."""
    config: Config


TOFU_REPORT = {"forget_metric": "tofu/forget_quality", "forget_goal": "max",
               "utility_metric": "tofu/model_utility", "utility_goal": "max"}
"""A grid evaluated with the tofu suite and no report: TOFU's forget quality vs model utility (both higher =
better); model utility is tofu/model_utility_8 where the eval's TOFU data lacks retain_perturbed."""


def flag_values(args: list[str], flag: str) -> list[str]:
    """Values of `flag VALUE` and `flag=VALUE` in an argument list, in order."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag] + \
        [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]


def default_report(eval_args: list[str]) -> dict:
    if not any("tofu" in s.split(",") for s in flag_values(eval_args, "--suite")):
        return {}
    from unlearn.eval.job import tofu_utility_metric  # torch-free

    return {**TOFU_REPORT, "utility_metric": tofu_utility_metric((flag_values(eval_args, "--tofu_data") or [""])[-1])}


def max_retries(raw: Any) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise UserError(f"sweep key 'max_retries' must be an integer >= 0, got {raw!r}")
    return raw


def _part(cls, key: str, raw: Any):
    """`cls(**raw)` for the sweep key `key` (absent: the defaults); a field it lacks is one line."""
    try:
        return cls(**(raw or {}))
    except TypeError:
        raise UserError(f"sweep key '{key}' accepts {sorted(cls.__dataclass_fields__)}, got {sorted(raw)}") from None


def halving_spec(raw: Any) -> HalvingSpec:
    spec = _part(HalvingSpec, "halving", raw)
    try:
        spec = HalvingSpec(float(spec.eta), int(spec.min_rounds), int(spec.min_points))
    except (TypeError, ValueError):
        raise UserError(f"sweep key 'halving' needs numbers, got {raw}") from None
    if spec.eta <= 1 or spec.min_rounds < 1 or spec.min_points < 1:
        raise UserError(f"sweep halving: eta={spec.eta:g}, min_rounds={spec.min_rounds}, min_points="
                        f"{spec.min_points}; expected eta > 1, min_rounds >= 1, min_points >= 1")
    return spec


def report_spec(raw: Any, eval_args: list[str]) -> ReportSpec:
    """The sweep's `report:` (or, for a grid evaluated with the tofu suite, TOFU's pair of metrics)."""
    spec = _part(ReportSpec, "report", raw or default_report(eval_args))
    for goal in (spec.forget_goal, spec.utility_goal):
        if goal not in ("min", "max"):
            raise UserError(f"sweep report goal '{goal}' is unknown; expected min or max")
    return spec


def select_spec(raw: Any) -> SelectSpec:
    spec = _part(SelectSpec, "select", raw)
    if spec.rule not in RULES:
        raise UserError(f"sweep select.rule '{spec.rule}' is unknown; expected one of: {', '.join(RULES)}")
    return spec
