#!/usr/bin/env bash
# The eval job of one checkpoint (submitted by slurm/sweep.sh with afterok on its training task):
#   slurm/eval-task.sh CHECKPOINT_DIR [launch/evaluate.py options]
# Writes CHECKPOINT_DIR/eval.json; refuses a checkpoint without its COMPLETE marker.
set -euo pipefail
echo "eval job $SLURM_JOB_ID on $(hostname): $1"
exec "${UNLEARN_PYTHON:-python}" launch/evaluate.py "$@"
