"""Hyperparameter sweeps through submitit (the same grid as `sbatch slurm/sweep.sh`).

    python launch/sweep.py configs/sweeps/X.yaml [--executor slurm|local] [--profile P.yaml]
                           [--wait] [key.sub=value | sweep.key=value ...]
    python launch/sweep.py --status SWEEP_DIR      # runs (files + scheduler), evals; 1 if one is lost/failed
    python launch/sweep.py --report SWEEP_DIR      # report.csv, report.png, HParams sessions

One job array (one task per grid point, `array_parallelism` at once); each task runs the distributed
run over its allocation, saves and requeues itself when stopped (`unlearn.sweep.jobs.TrainJob`), and
is retried after a crash up to `max_retries` times. Each checkpoint's eval is its own job, `afterany`
on its training task; a report job runs after all evals.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from unlearn.errors import guarded  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", nargs="?", help="sweep YAML (configs/sweeps/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="patch the base run config; sweep.key=value sets a sweep key (sweep.output_dir=...)")
    parser.add_argument("--executor", choices=["slurm", "local"], default="slurm")
    parser.add_argument("--profile", default="", help="cluster profile YAML (default: the sweep's `profile:`)")
    parser.add_argument("--wait", action="store_true", help="wait for every job; fail if one failed")
    parser.add_argument("--plan-shell", action="store_true", help=argparse.SUPPRESS)  # for slurm/sweep.sh
    parser.add_argument("--status", metavar="SWEEP_DIR", help="print each run's state and newest eval metrics")
    parser.add_argument("--report", metavar="SWEEP_DIR", help="write report.csv/png and HParams sessions")
    parser.add_argument("--best", metavar="DIR", help="choose a checkpoint of a sweep or run by rule (DIR/best.json)")
    parser.add_argument("--rule", default="", help="threshold | pareto-knee | score | muse (default: the grid's select:)")
    args = parser.parse_intermixed_args(argv)

    def job() -> None:
        from unlearn.sweep import grid, report, submit

        if args.status:
            sweep, pts = grid.open_sweep(args.status)
            print(report.status_table(sweep, pts))
            if report.lost_runs(sweep, pts) or report.failed_evals(sweep, pts):
                raise SystemExit(1)
        elif args.best:
            from unlearn.sweep import select

            words = [w for w in [args.grid, *args.overrides] if w]  # key=value words land in `grid` first
            print(select.table(select.best_for(args.best, args.rule, words)))
        elif args.report:
            report.report_folder(args.report)
        elif args.grid and args.plan_shell:
            submit.plan_shell(args.grid, args.overrides, args.profile)
        elif args.grid:
            submit.submit(args.grid, args.overrides, executor_kind=args.executor, profile=args.profile,
                          wait=args.wait)
        else:
            parser.error("give a sweep YAML, --status SWEEP_DIR or --report SWEEP_DIR")

    guarded(job)


if __name__ == "__main__":
    main()
