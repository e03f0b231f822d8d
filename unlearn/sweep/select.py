"""Choosing a checkpoint by rule, over the per-checkpoint eval.json files of a sweep or of one run.

    python launch/sweep.py --best SWEEP_OR_RUN_DIR [--rule R] [key=value ...]

Rules (the forget and utility metrics and their goals are the sweep's `report:`; the rule and its
parameters its `select:`; `key=value` words set either for this call, e.g. on a run folder):
- threshold: per run, the first checkpoint (lowest step) whose forget metric reaches
  `forget_target` while its utility metric stays within `utility_bound` (each by its goal); of those,
  the best utility wins. MUSE's rule is a case of it: the first checkpoint whose KnowMem on the
  forget set is at or below the retain model's, utility unbounded: `--rule muse` (below).
- pareto-knee: on the forget/utility Pareto front, with both axes scaled to [0, 1] over the front,
  the point farthest from the line through the front's two ends (the best trade-off); a front of
  one or two points gives the one with the larger scaled sum.
- score: the highest sum of weight x metric over `weights` (e.g. {copyright/verbatim_rouge_l: -1,
  utility/truthfulqa_mc2: 2}); checkpoints lacking a weighted metric are left out.
- muse (a preset of threshold): MUSE's rule (jaechan-repo/muse_bench knowmem/scripts/
  get_best_forget_quality.py: per run, the first checkpoint whose forget KnowMem, mean ROUGE-L F1, is
  <= the retrained model's): forget_metric muse/knowmem_forget (goal min), utility_metric
  muse/knowmem_retain (goal max, unbounded), forget_target = the retrained model's value, given as
  forget_target=X or read with forget_target_from=PATH (its eval.json, or the folder holding it).
Writes best.json in the folder: run, step, checkpoint, metrics, rule, parameters and why it won;
a winner whose files no longer match its manifest is refused instead (one line naming the file).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from unlearn import manifest
from unlearn.errors import UserError
from unlearn.runs import complete_checkpoints, evaluated
from unlearn.sweep.progress import flat_metrics
from unlearn.sweep.spec import RULES, ReportSpec, SelectSpec

BEST_FILE = "best.json"
MUSE = (ReportSpec(forget_metric="muse/knowmem_forget", forget_goal="min", utility_metric="muse/knowmem_retain",
                   utility_goal="max"), SelectSpec(rule="threshold"))
"""`--rule muse`: MUSE's checkpoint rule as threshold settings (forget_target still to be given)."""


@dataclass(frozen=True)
class Candidate:
    run: str
    step: int
    checkpoint: str
    metrics: dict[str, float]


def candidates(folder: Path) -> list[Candidate]:
    """Every evaluated complete checkpoint of a sweep folder (runs/*) or of one run folder."""
    run_dirs = sorted(p for p in (folder / "runs").iterdir() if p.is_dir()) if (folder / "runs").is_dir() \
        else [folder]
    out = []
    for run_dir in run_dirs:
        for ckpt in complete_checkpoints(run_dir):
            if evaluated(ckpt):  # every suite asked for finished (a partial eval.json is not ranked)
                out.append(Candidate(run_dir.name, int(ckpt.name.split("-")[1]), str(ckpt),
                                     flat_metrics(ckpt / "eval.json")))
    return out


def _better(goal: str) -> float:
    return 1.0 if goal == "max" else -1.0


def choose(cands: list[Candidate], report: ReportSpec, sel: SelectSpec) -> tuple[Candidate, str]:
    """(winner, why) by `sel.rule`; UserError when no checkpoint qualifies."""
    if sel.rule not in RULES:
        raise UserError(f"selection rule '{sel.rule}' is unknown; expected one of: {', '.join(RULES)}")
    if sel.rule == "score":
        if not sel.weights:
            raise UserError("rule score needs select.weights (metric: weight); expected e.g. "
                            "{copyright/verbatim_rouge_l: -1, utility/retain_ppl: -0.1}")
        scored = [(sum(w * c.metrics[k] for k, w in sel.weights.items()), c) for c in cands
                  if all(k in c.metrics for k in sel.weights)]
        if not scored:
            raise UserError(f"no evaluated checkpoint has all of {sorted(sel.weights)}")
        value, best = max(scored, key=lambda sc: (sc[0], -sc[1].step))
        return best, f"highest score {value:.4g} = " + " + ".join(f"{w:g} x {k}" for k, w in sel.weights.items())
    f, u = report.forget_metric, report.utility_metric
    if not (f and u):
        raise UserError("selection needs report.forget_metric and report.utility_metric; expected them in the "
                        "grid's report: or as forget_metric=... utility_metric=... words")
    have = [c for c in cands if f in c.metrics and u in c.metrics]
    if sel.rule == "threshold" and sel.utility_bound is None:  # utility only ranks runs: not required
        have = [c for c in cands if f in c.metrics]
    if not have:
        raise UserError(f"no evaluated checkpoint has both {f} and {u}")
    sf, su = _better(report.forget_goal), _better(report.utility_goal)
    if sel.rule == "threshold":
        if sel.forget_target is None:
            raise UserError("rule threshold needs select.forget_target; expected the forget metric's target value")
        ok = [c for c in have if sf * c.metrics[f] >= sf * sel.forget_target
              and (sel.utility_bound is None or su * c.metrics[u] >= su * sel.utility_bound)]
        first = {}
        for c in sorted(ok, key=lambda c: c.step):
            first.setdefault(c.run, c)
        if not first:
            closest = max(have, key=lambda c: sf * c.metrics[f])
            raise UserError(f"no checkpoint reaches {f} {'<=' if sf < 0 else '>='} {sel.forget_target} with {u} "
                            f"within {sel.utility_bound}; closest: {closest.run} step {closest.step} "
                            f"({f}={closest.metrics[f]:.4g}, {u}={closest.metrics.get(u, math.nan):.4g})")
        best = max(first.values(), key=lambda c: (u in c.metrics, su * c.metrics.get(u, 0.0), -c.step))
        return best, (f"first checkpoint of its run with {f}={best.metrics[f]:.4g} reaching {sel.forget_target} "
                      f"and {u}={best.metrics.get(u, math.nan):.4g} within {sel.utility_bound}; best {u} of "
                      f"{len(first)} such runs")
    front = [c for c, on in zip(have, pareto_front([c.metrics[f] for c in have], [c.metrics[u] for c in have],
                                                   report.forget_goal, report.utility_goal)) if on]
    xs, ys = [sf * c.metrics[f] for c in front], [su * c.metrics[u] for c in front]

    def scaled(v: float, vals: list[float]) -> float:
        return (v - min(vals)) / (max(vals) - min(vals)) if max(vals) > min(vals) else 1.0

    pts = [(scaled(x, xs), scaled(y, ys)) for x, y in zip(xs, ys)]
    if len(front) <= 2:
        i = max(range(len(front)), key=lambda i: (pts[i][0] + pts[i][1], -front[i].step))
        return front[i], f"best scaled forget + utility on a Pareto front of {len(front)}"
    (ax, ay), (bx, by) = max(pts, key=lambda p: p[0]), max(pts, key=lambda p: p[1])
    norm = math.hypot(bx - ax, by - ay) or 1.0
    dist = [abs((by - ay) * x - (bx - ax) * y + bx * ay - by * ax) / norm for x, y in pts]
    i = max(range(len(front)), key=lambda i: (dist[i], -front[i].step))
    return front[i], f"knee of a Pareto front of {len(front)}: farthest from the line between its ends"


def pareto_front(xs: list[float], ys: list[float], x_goal: str, y_goal: str) -> list[bool]:
    """True where no other point is at least as good on both axes and better on one."""
    sx = 1.0 if x_goal == "max" else -1.0
    sy = 1.0 if y_goal == "max" else -1.0
    pts = [(sx * x, sy * y) for x, y in zip(xs, ys)]  # now "higher is better" on both
    return [not any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in pts) for x, y in pts]


def apply_words(report: ReportSpec, sel: SelectSpec, words: list[str]) -> tuple[ReportSpec, SelectSpec]:
    """`key=value` words set ReportSpec/SelectSpec fields (numbers parsed; weights as k:w,k:w)."""
    target_from = ""
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise UserError(f"'{word}' is not key=value; expected e.g. forget_metric=copyright/verbatim_rouge_l")
        if key == "forget_target_from":
            target_from = value
        elif key in {f.name for f in fields(ReportSpec)}:
            report = replace(report, **{key: value})
        elif key == "weights":
            pairs = [p.rpartition(":") for p in value.split(",") if p]
            sel = replace(sel, weights={k: float(w) for k, _, w in pairs})
        elif key in {f.name for f in fields(SelectSpec)}:
            sel = replace(sel, **{key: value if key == "rule" else float(value)})
        else:
            raise UserError(f"'{key}' is not a selection setting; expected one of "
                            f"{', '.join([f.name for f in fields(ReportSpec)] + [f.name for f in fields(SelectSpec)])}"
                          ", forget_target_from")
    if target_from:
        sel = replace(sel, forget_target=target_value(target_from, report.forget_metric))
    return report, sel


def target_value(path: str, metric: str) -> float:
    """`metric` of an eval.json (or of the eval.json in folder `path`): e.g. a retrained model's KnowMem."""
    file = Path(path) / "eval.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise UserError(f"forget_target_from '{path}' has no eval.json; expected the retrained model's eval.json "
                        "(launch/evaluate.py MODEL --suite muse ...) or its folder")
    values = flat_metrics(file)
    if metric not in values:
        raise UserError(f"forget_target_from '{file}' has no {metric or 'forget metric'}; it has "
                        f"{', '.join(sorted(values)) or 'no metrics'}")
    return values[metric]


def best(folder: str | Path, report: ReportSpec, sel: SelectSpec) -> dict[str, Any]:
    """Choose, check that the winner's weights match its manifest (else refuse, writing nothing),
    write FOLDER/best.json, return it."""
    winner, why = choose(candidates(Path(folder)), report, sel)
    return write_best(Path(folder), winner, why, report, sel)


def write_best(folder: Path, winner: Candidate, why: str, report: ReportSpec, sel: SelectSpec) -> dict[str, Any]:
    """FOLDER/best.json for a chosen checkpoint, once its weights match their manifest (manifest.Damaged
    names the file otherwise, and a best.json of an earlier choice is removed); returns its content."""
    try:
        manifest.verify(Path(winner.checkpoint), engine=False)
    except manifest.Damaged:
        (folder / BEST_FILE).unlink(missing_ok=True)
        raise
    result = {**asdict(winner), "rule": sel.rule, "parameters": asdict(sel), "report": asdict(report), "why": why}
    (folder / BEST_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict[str, Any]) -> str:
    """One screen: the rule, the winner, its metrics."""
    lines = [f"best by {result['rule']}: {result['run']} step {result['step']}", f"  {result['checkpoint']}",
             f"  why: {result['why']}"]
    lines += [f"  {k:<44}{v:>11.4g}" for k, v in sorted(result["metrics"].items())]
    return "\n".join(lines)


def best_for(folder: str | Path, rule: str = "", words: list[str] | None = None) -> dict[str, Any]:
    """`--best`: a sweep folder uses its grid's report: and select:, a run folder the defaults; `rule`
    and `key=value` words override them."""
    from unlearn.sweep.grid import open_sweep

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"'{folder}' is not a folder; expected a sweep folder or a run folder (runs/<name>)")
    report, sel = ReportSpec(), SelectSpec()
    if (folder / "tasks.txt").is_file():
        sweep, _ = open_sweep(folder)
        report, sel = sweep.report, sweep.select
    if rule == "muse":
        (report, sel), rule = MUSE, "threshold"
    report, sel = apply_words(report, sel, words or [])
    if rule == "threshold" and sel.forget_target is None and report.forget_metric == MUSE[0].forget_metric:
        raise UserError("rule muse needs the retrained model's KnowMem on the forget set; expected "
                        "forget_target_from=RETRAINED/eval.json or forget_target=VALUE")
    return best(folder, report, replace(sel, rule=rule) if rule else sel)
