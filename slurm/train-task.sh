#!/usr/bin/env bash
# One grid point of a sweep (an array task submitted by slurm/sweep.sh): one distributed training
# run over this job's allocation, one rank per SLURM task (srun), on any number of nodes.
#   slurm/train-task.sh SWEEP_DIR DS_CONFIG [MAX_RETRIES]
# Always --resume auto: a requeued task continues from its run's newest complete checkpoint.
#
# Stops reach every rank, which saves at its next step and exits 3; this task then requeues itself
# (same job id: its eval jobs' afterany keeps waiting):
#   - sent to the job steps (scancel --signal, SLURM's preemption, --signal=USR1@N before the time
#     limit): each rank's wrapper passes it on (proctrack/cgroup signals only a step's direct children);
#   - sent to the batch step (scancel --full or --batch, some sites' preemption): this shell survives
#     it and passes SIGUSR1 on through srun, which runs detached from it (slurm/detach.sh says why).
# Other failures (a rank killed, e.g. out of memory; a traceback) are retried from the newest complete
# checkpoint up to MAX_RETRIES times (default 2); a user error (exit 2) or a divergence stop (exit 4)
# never: unlearn/sweep/outcome.py decides and keeps runs/NAME/train.retries and train.exit (the exit
# status once the task ended for good), which --status and the report read.
# In a `search: halving` sweep it releases the run's held eval jobs as checkpoints appear, and at the
# end (the run is over: halving counts it out of later rounds and decides them now) the rest.
set -uo pipefail
SWEEP_DIR=$1 DS_CONFIG=$2 MAX_RETRIES=${3:-2}
PY=${UNLEARN_PYTHON:-python}
name=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$SWEEP_DIR/tasks.txt")
[ -n "$name" ] || { echo "no grid point $SLURM_ARRAY_TASK_ID in $SWEEP_DIR/tasks.txt" >&2; exit 2; }
source slurm/detach.sh   # sbatch runs a copy of this script: paths are relative to the checkout (--chdir)
relay_stops USR1

# Rank 0's node is the rendezvous; its address as SLURM knows it (test nodes n1, n2 share localhost).
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$first" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
export MASTER_ADDR=${MASTER_ADDR:-$first}
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))   # one port per job: tasks may share a host
echo "task $SLURM_ARRAY_TASK_ID ($name): job $SLURM_JOB_ID, $SLURM_NTASKS rank(s) on $SLURM_JOB_NODELIST," \
     "rendezvous $MASTER_ADDR:$MASTER_PORT, restart ${SLURM_RESTART_COUNT:-0}"

# Each rank's exit status, one line each: srun's own status is not enough, since --kill-on-bad-exit
# may kill the other ranks before they exit 3 too.
export EXITS=$SWEEP_DIR/logs/.exits-$SLURM_JOB_ID
rm -f "$EXITS" "$SWEEP_DIR/runs/$name/train.exit"
halving=0; grep -qx 'search: halving' "$SWEEP_DIR/sweep.yaml" && halving=1
if [ "$halving" = 1 ]; then   # evaluation while training: release held eval jobs as checkpoints appear
  (trap '' TERM USR1 USR2; exec "$PY" -m unlearn.sweep.halving --watch "$SWEEP_DIR" "$name") & watcher=$!
fi
# RANK etc. per srun task; unlearn/distributed.py reads them.
detached_srun --kill-on-bad-exit=1 bash -c \
  'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
   trap "kill -TERM \$pid" TERM; trap "kill -USR1 \$pid" USR1   # outlive the run to report its status
   "$@" & pid=$!
   while wait "$pid"; rc=$?; [ "$rc" -gt 128 ] && kill -0 "$pid" 2>/dev/null; do :; done
   echo "$rc" >> "$EXITS"; exit "$rc"' rank \
  "$PY" launch/unlearn.py --ds_config "$DS_CONFIG" --config "$SWEEP_DIR/configs/$name.yaml" --resume auto --no_report
rc=$?
if [ "$rc" = 0 ] && [ "$(cat "$EXITS" 2>/dev/null | wc -l)" -lt "$SLURM_NTASKS" ]; then
  rc=1; echo "a rank left no exit status (its node lost?)" >&2   # srun returns 0 after a node failure
fi
# shellcheck disable=SC2046  # one word per rank
next=$("$PY" -m unlearn.sweep.outcome "$SWEEP_DIR/runs/$name" "$MAX_RETRIES" "$STOPPED" \
       "${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID restart ${SLURM_RESTART_COUNT:-0}" "$rc" $(cat "$EXITS" 2>/dev/null))
rm -f "$EXITS"
if [ "$next" = requeued ]; then   # the run resumes in the next incarnation
  [ "$halving" = 1 ] && kill "$watcher"   # which watches again
elif [ "$halving" = 1 ]; then
  wait "$watcher"   # it releases the eval jobs still held, then ends
  "$PY" -m unlearn.sweep.halving "$SWEEP_DIR" || echo "halving decision failed" >&2
fi
exit "$rc"
