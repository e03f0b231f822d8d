"""Sweeps: a grid of runs on SLURM (sbatch or submitit), an eval job per checkpoint, a report.

spec.py     what a sweep YAML says: Sweep, its report/select/halving parts, Point (checked)
grid.py     sweep YAML -> grid points -> the sweep folder
profile.py  cluster profiles (slurm/profiles/*.yaml) as sbatch options or submitit parameters
jobs.py     submitit job classes: TrainJob (requeues itself), EvalJob, ReportJob
submit.py   plan + submit through submitit, or print the plan for slurm/sweep.sh (entry)
report.py   status table, report.csv/png, TensorBoard HParams sessions
select.py   choosing a checkpoint by rule (--best)
halving.py  successive halving (search: halving): rank each eval round, stop the worst (STOP files)
"""
