"""Two GPU questions read off benchmark reports (launch/bench.py --json), for slurm/bench_gpu.sh:

* `batches`: the same variant at growing batch sizes. The step is arithmetic-bound once its model
  FLOPs utilisation (MFU) stops rising with the batch: the smallest batch whose MFU is within
  `BOUND` of the best measured one.
* `shared`: K benchmark processes on one GPU at once (what `runs_per_gpu: K` does to a sweep).
  Each takes `step_s` per step; K runs of `steps_per_run` steps finish in steps_per_run x (their
  slowest median step), so grid points per GPU-hour = 3600 K / (steps_per_run x slowest step_s).

    python -m unlearn.bench.scaling batches VARIANT REPORT.json ...
    python -m unlearn.bench.scaling shared VARIANT STEPS_PER_RUN K=REPORT.json[,REPORT.json ...] ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from unlearn.errors import UserError, guarded

BOUND = 0.8
"""A batch is arithmetic-bound when its MFU is at least this fraction of the best measured MFU."""


def _row(report: dict, variant: str) -> dict:
    rows = [r for r in report["results"] if r["variant"] == variant]
    if not rows:
        raise UserError(f"no variant '{variant}' in the report; expected one of "
                        f"{', '.join(r['variant'] for r in report['results'])}")
    return rows[0]


def batches(reports: list[dict], variant: str) -> dict:
    """Per batch: s/step, tokens/s, MFU; and the smallest arithmetic-bound batch (None without MFU)."""
    rows = []
    for rep in sorted(reports, key=lambda r: r["spec"]["batch"]):
        r = _row(rep, variant)
        rows.append({"batch": rep["spec"]["batch"], "status": r["status"], "step_s": r.get("step_s"),
                     "tokens_per_s": r.get("tokens_per_s"), "mfu": r.get("mfu"),
                     "gpu_peak_gib": r.get("gpu_peak_gib")})
    mfus = [r["mfu"] for r in rows if r["mfu"] is not None]
    best = max(mfus, default=None)
    bound = next((r["batch"] for r in rows if best and r["mfu"] is not None and r["mfu"] >= BOUND * best), None)
    return {"variant": variant, "rows": rows, "best_mfu": best, "bound_batch": bound}


def batches_table(summary: dict, device: str = "") -> str:
    lines = [f"{summary['variant']} by batch{' on ' + device if device else ''}: arithmetic-bound from batch "
             f"{summary['bound_batch']} (MFU >= {BOUND:.0%} of the best, {100 * (summary['best_mfu'] or 0):.1f}%)",
             f"{'batch':>6} {'s/step':>8} {'tokens/s':>10} {'MFU':>6} {'GiB':>6}"]
    for r in summary["rows"]:
        if r["status"] != "ok":
            lines.append(f"{r['batch']:>6} {r['status']}")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        gib = f"{r['gpu_peak_gib']:.1f}" if r["gpu_peak_gib"] is not None else "-"
        lines.append(f"{r['batch']:>6} {r['step_s']:>8.3f} {r['tokens_per_s']:>10.0f} {mfu:>6} {gib:>6}")
    return "\n".join(lines)


def shared(runs: dict[int, list[dict]], variant: str, steps_per_run: int) -> list[dict]:
    """Per K (reports of the K processes that shared the GPU): the slowest median step, and grid
    points per GPU-hour for runs of `steps_per_run` steps."""
    out = []
    for k, reports in sorted(runs.items()):
        rows = [_row(rep, variant) for rep in reports]
        ok = [r for r in rows if r["status"] == "ok"]
        if len(ok) < k:
            out.append({"k": k, "status": "failed", "errors": [r.get("error", "") for r in rows if r not in ok]})
            continue
        slowest = max(r["step_s"] for r in ok)
        out.append({"k": k, "status": "ok", "step_s": slowest,
                    "gpu_reserved_gib": [r.get("gpu_reserved_gib") for r in ok],
                    "points_per_gpu_hour": 3600 * k / (steps_per_run * slowest)})
    return out


def shared_table(rows: list[dict], variant: str, steps_per_run: int) -> str:
    lines = [f"{variant}, K runs sharing one GPU, {steps_per_run} steps a run",
             f"{'K':>3} {'s/step':>8} {'points/GPU-hour':>16} {'x K=1':>6}  GiB reserved per run"]
    base = next((r["points_per_gpu_hour"] for r in rows if r["status"] == "ok" and r["k"] == 1), None)
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"{r['k']:>3} failed: {' | '.join(r['errors'])[:120]}")
            continue
        gain = f"{r['points_per_gpu_hour'] / base:.2f}" if base else "-"
        gib = ", ".join(f"{g:.1f}" for g in r["gpu_reserved_gib"] if g is not None) or "-"
        lines.append(f"{r['k']:>3} {r['step_s']:>8.3f} {r['points_per_gpu_hour']:>16.1f} {gain:>6}  {gib}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    def job() -> None:
        if argv[:1] == ["batches"] and len(argv) >= 3:
            reports = [json.loads(Path(p).read_text()) for p in argv[2:]]
            print(batches_table(batches(reports, argv[1]), reports[0].get("device", "")))
        elif argv[:1] == ["shared"] and len(argv) >= 4:
            runs = {int(k): [json.loads(Path(p).read_text()) for p in files.split(",")]
                    for k, files in (a.split("=", 1) for a in argv[3:])}
            print(shared_table(shared(runs, argv[1], int(argv[2])), argv[1], int(argv[2])))
        else:
            raise UserError("usage: python -m unlearn.bench.scaling batches VARIANT REPORT.json ... | "
                            "shared VARIANT STEPS_PER_RUN K=REPORT.json[,REPORT.json] ...")

    guarded(job)


if __name__ == "__main__":
    main(sys.argv[1:])
