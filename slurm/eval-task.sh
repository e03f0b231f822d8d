#!/usr/bin/env bash
# One checkpoint's evaluation, as an sbatch job of slurm/sweep.sh:
#   slurm/eval-task.sh CHECKPOINT_DIR MAX_RETRIES [launch/evaluate.py options]
# A failure leaves its reason in CHECKPOINT_DIR/eval.error (evaluate.py writes it for errors it
# catches; unlearn.sweep.outcome for any other exit), which `launch/sweep.py --status` shows.
# It starts once its training task is over for good (afterany; or released by it in a halving sweep),
# whatever became of the task: a checkpoint the run never completed (it stopped, crashed for good or
# was stopped by halving before that step) is skipped with the reason (exit 0); --status counts it as
# skipped. In a sweep with `search: halving` it then decides the rounds its result completes (STOP
# files, halving.json).
#
# Stops reach evaluate.py, a job step run detached from this shell as in slurm/train-task.sh
# (slurm/detach.sh): sent to the step (scancel --signal, preemption, --signal=USR1@N before the time
# limit) or to this shell (scancel --full or --batch), which passes it on through srun. evaluate.py
# keeps the suites that finished in eval.json and exits 3; this job then requeues itself (same job id:
# the report's afterany keeps waiting) and its next incarnation runs only the suites not yet in
# eval.json, up to MAX_RETRIES requeues; after that eval.error says it gave up (unlearn.sweep.outcome).
set -uo pipefail
CKPT=$1 MAX_RETRIES=$2
# `make setup`'s .venv unless UNLEARN_PYTHON names another Python (a job's shell has no environment active)
PY=${UNLEARN_PYTHON:-$([ -x "$PWD/.venv/bin/python" ] && echo "$PWD/.venv/bin/python" || echo python)}
echo "eval job ${SLURM_JOB_ID:-local} on $(hostname): $CKPT, restart ${SLURM_RESTART_COUNT:-0}"
if [ ! -f "$CKPT/COMPLETE" ]; then
  why=$("$PY" -m unlearn.sweep.halving --skip "$CKPT") || why="skipped $CKPT: the run never completed it"
  echo "$why"
  exit 0
fi
source slurm/detach.sh   # sbatch runs a copy of this script: paths are relative to the checkout (--chdir)
relay_stops USR1         # evaluate.py takes SIGUSR1 as a stop, as SIGTERM (which srun would turn into a kill)
detached_srun --nodes=1 --ntasks=1 "$PY" launch/evaluate.py "$CKPT" "${@:3}"
rc=$?
next=$("$PY" -m unlearn.sweep.outcome --eval "$CKPT" "$MAX_RETRIES" "$STOPPED" "$SLURM_JOB_ID" \
       "${SLURM_RESTART_COUNT:-0}" "$rc") || next=failed
[ "$next" = requeued ] && exit "$rc"   # the next incarnation evaluates (and decides halving rounds)
sweep=$(dirname "$(dirname "$(dirname "$(dirname "$CKPT")")")")   # SWEEP/runs/NAME/checkpoints/step-X
if grep -qx 'search: halving' "$sweep/sweep.yaml" 2>/dev/null; then
  "$PY" -m unlearn.sweep.halving "$sweep" || echo "halving decision failed (the next eval retries it)" >&2
fi
exit "$rc"
