#!/usr/bin/env bash
# One checkpoint's evaluation, as an sbatch job of slurm/sweep.sh:
#   slurm/eval-task.sh CHECKPOINT_DIR [launch/evaluate.py options]
# A failure leaves its reason in CHECKPOINT_DIR/eval.error (evaluate.py writes it for errors it
# catches; this script for a signal or any other exit), which `launch/sweep.py --status` shows.
# It starts once its training task is over for good (afterany; or released by it in a halving sweep),
# whatever became of the task: a checkpoint the run never completed (it stopped, crashed for good or
# was stopped by halving before that step) is skipped with the reason (exit 0); --status counts it as
# skipped. In a sweep with `search: halving` it then decides the rounds its result completes (STOP
# files, halving.json).
set -uo pipefail
# `make setup`'s .venv unless UNLEARN_PYTHON names another Python (a job's shell has no environment active)
PY=${UNLEARN_PYTHON:-$([ -x "$PWD/.venv/bin/python" ] && echo "$PWD/.venv/bin/python" || echo python)}
echo "eval job ${SLURM_JOB_ID:-local} on $(hostname): $1"
if [ ! -f "$1/COMPLETE" ]; then
  why=$("$PY" -m unlearn.sweep.halving --skip "$1") || why="skipped $1: the run never completed it"
  echo "$why"
  exit 0
fi
trap 'echo "stopped by a signal (time limit or scancel) in job ${SLURM_JOB_ID:-?}" > "$1/eval.error"; exit 143' TERM
"$PY" launch/evaluate.py "$@" &
wait $!
rc=$?
if [ "$rc" -ne 0 ] && [ ! -f "$1/eval.error" ]; then
  echo "evaluate.py exited with status $rc (see the job's log)" > "$1/eval.error"
fi
sweep=$(dirname "$(dirname "$(dirname "$(dirname "$1")")")")   # SWEEP/runs/NAME/checkpoints/step-X
if grep -qx 'search: halving' "$sweep/sweep.yaml" 2>/dev/null; then
  "$PY" -m unlearn.sweep.halving "$sweep" || echo "halving decision failed (the next eval retries it)" >&2
fi
exit "$rc"
