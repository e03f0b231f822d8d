#!/usr/bin/env bash
# One checkpoint's evaluation, as an sbatch job of slurm/sweep.sh:
#   slurm/eval-task.sh CHECKPOINT_DIR [launch/evaluate.py options]
# A failure leaves its reason in CHECKPOINT_DIR/eval.error (evaluate.py writes it for errors it
# catches; this script for a signal or any other exit), which `launch/sweep.py --status` shows.
set -uo pipefail
echo "eval job ${SLURM_JOB_ID:-local} on $(hostname): $1"
trap 'echo "stopped by a signal (time limit or scancel) in job ${SLURM_JOB_ID:-?}" > "$1/eval.error"; exit 143' TERM
"${UNLEARN_PYTHON:-python}" launch/evaluate.py "$@" &
wait $!
rc=$?
if [ "$rc" -ne 0 ] && [ ! -f "$1/eval.error" ]; then
  echo "evaluate.py exited with status $rc (see the job's log)" > "$1/eval.error"
fi
exit "$rc"
