#!/usr/bin/env bash
# Submit a hyperparameter sweep as SLURM jobs, from the repository root:
#
#   sbatch slurm/sweep.sh configs/sweeps/X.yaml [--profile slurm/profiles/P.yaml] [key.sub=value ...]
#   (or `bash slurm/sweep.sh ...` on a login node: the same, without the small submitting job)
#
# Plans the sweep folder (launch/sweep.py --plan-shell), then submits
#   - one job array, one task per grid point (slurm/train-task.sh): a distributed run over its allocation
#     (K grid points per task with runs_per_gpu: K in the cluster profile);
#   - one eval job per checkpoint (slurm/eval-task.sh), --dependency=afterany on its own array task: it
#     runs once the task is over for good, whatever became of it, and evaluates the checkpoint if the
#     run completed it (else it ends at once) (with `search: halving`: held, and released by the
#     training task once the checkpoint is written); stopped, it requeues itself up to max_retries times;
#   - a report job (report.csv/png, HParams) after all evals (afterany: a failed eval still gets a report;
#     a requeued one keeps its job id, so the report waits for its next incarnation).
# Job ids go to SWEEP_DIR/jobs.txt; this submitting job logs to slurm/logs/. Resources come from the cluster
# profile, not from this file.
#SBATCH --job-name=sweep-submit
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --time=10
#SBATCH --output=slurm/logs/sweep-submit-%j.out
set -euo pipefail

ROOT=${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
cd "$ROOT"
# `make setup`'s .venv unless UNLEARN_PYTHON names another Python (a job's shell has no environment active)
PY=${UNLEARN_PYTHON:-$([ -x "$PWD/.venv/bin/python" ] && echo "$PWD/.venv/bin/python" || echo python)}
[ $# -ge 1 ] || { echo "usage: sbatch slurm/sweep.sh configs/sweeps/X.yaml [--profile P.yaml] [key=value ...]" >&2; exit 2; }

# SWEEP_DIR N_TASKS PARALLEL DS_CONFIG SWEEP_NAME TRAIN_SBATCH EVAL_SBATCH EVAL_ARGS HALVING MAX_RETRIES
eval "$("$PY" launch/sweep.py --plan-shell "$@")"

# TRAIN_SBATCH / EVAL_SBATCH hold several options: split on purpose
# shellcheck disable=SC2086
train=$(sbatch --parsable --chdir="$ROOT" --job-name="$SWEEP_NAME" --array="0-$((N_TASKS - 1))%$PARALLEL" \
        $TRAIN_SBATCH --output="$SWEEP_DIR/logs/train-%A_%a.out" slurm/train-task.sh "$SWEEP_DIR" "$DS_CONFIG" "$MAX_RETRIES")
train=${train%%;*}   # --parsable prints "id[;cluster]"
echo "train array $train: $N_TASKS task(s) under $SWEEP_DIR/runs"

evals=()
while IFS=$'\t' read -r task name step ckpt; do
  after="--dependency=afterany:${train}_${task}"
  [ "$HALVING" = 1 ] && after=--hold   # evaluation while training: released by slurm/train-task.sh
  # shellcheck disable=SC2086
  id=$(sbatch --parsable --chdir="$ROOT" --job-name="eval-$name-$step" "$after" \
       $EVAL_SBATCH --output="$SWEEP_DIR/logs/eval-${name}-step${step}-%j.out" \
       slurm/eval-task.sh "$ckpt" "$MAX_RETRIES" $EVAL_ARGS)
  evals+=("${id%%;*}")
done < "$SWEEP_DIR/evals.tsv"
echo "eval jobs: ${evals[*]:-none}"

deps=$(IFS=:; echo "${evals[*]:-$train}")   # without evals the report waits for the runs
report=$(sbatch --parsable --chdir="$ROOT" --job-name="$SWEEP_NAME-report" --dependency="afterany:$deps" \
         --ntasks=1 --time=10 --output="$SWEEP_DIR/logs/report-%j.out" --wrap="$PY launch/sweep.py --report $SWEEP_DIR")
echo "report job ${report%%;*}"
printf 'train %s\neval %s\nreport %s\n' "$train" "${evals[*]:-}" "${report%%;*}" > "$SWEEP_DIR/jobs.txt"
