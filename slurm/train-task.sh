#!/usr/bin/env bash
# One grid point of a sweep (an array task submitted by slurm/sweep.sh): one distributed training
# run over this job's allocation, one rank per SLURM task (srun), on any number of nodes. With
# `runs_per_gpu: K` in the cluster profile the task's line of tasks.txt names K grid points: they
# train at once as K single-rank job steps (srun --overlap) sharing the allocation's GPU.
#   slurm/train-task.sh SWEEP_DIR DS_CONFIG
# Always --resume auto: a requeued task continues from its run's newest complete checkpoint.
# SIGUSR1 (sent before the time limit, --signal) or SIGTERM (preemption, scontrol requeue) makes the
# run save at its next step and exit 3; then this task requeues itself (same job id: afterok holds).
# In a `search: halving` sweep it releases the run's held eval jobs as checkpoints appear, and at the
# end writes the exit status to runs/NAME/train.exit (the run is over: halving counts it out of
# later rounds and decides them now; its eval jobs still held are released).
set -uo pipefail
SWEEP_DIR=$1 DS_CONFIG=$2
# `make setup`'s .venv unless UNLEARN_PYTHON names another Python (a job's shell has no environment active)
PY=${UNLEARN_PYTHON:-$([ -x "$PWD/.venv/bin/python" ] && echo "$PWD/.venv/bin/python" || echo python)}
read -r -a names <<< "$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$SWEEP_DIR/tasks.txt")"
[ "${#names[@]}" -gt 0 ] || { echo "no grid point $SLURM_ARRAY_TASK_ID in $SWEEP_DIR/tasks.txt" >&2; exit 2; }
name=${names[0]}

# Rank 0's node is the rendezvous; its address as SLURM knows it (test nodes n1, n2 share localhost).
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$first" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
export MASTER_ADDR=${MASTER_ADDR:-$first}
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))   # one port per job: tasks may share a host
echo "task $SLURM_ARRAY_TASK_ID (${names[*]}): job $SLURM_JOB_ID, $SLURM_NTASKS rank(s) on $SLURM_JOB_NODELIST," \
     "rendezvous $MASTER_ADDR:$MASTER_PORT, restart ${SLURM_RESTART_COUNT:-0}"

# A rank that exits 3 (unlearn.errors.EXIT_REQUEUE: checkpoint saved) leaves this flag: srun's own
# status is not enough, since --kill-on-bad-exit may kill the other ranks before they exit 3 too.
export REQUEUE_FLAG=$SWEEP_DIR/logs/.requeue-$SLURM_JOB_ID
rm -f "$REQUEUE_FLAG" "$SWEEP_DIR/runs/$name/train.exit"
halving=0; grep -qx 'search: halving' "$SWEEP_DIR/sweep.yaml" && halving=1
if [ "$halving" = 1 ]; then   # evaluation while training: release held eval jobs as checkpoints appear
  "$PY" -m unlearn.sweep.halving --watch "$SWEEP_DIR" "$name" & watcher=$!
fi
# RANK etc. per srun task; unlearn/distributed.py reads them.
train() {  # run name, then srun options
  local run=$1; shift
  srun --kill-on-bad-exit=1 "$@" bash -c \
    'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
     trap : USR1 TERM   # SLURM signals this shell too: outlive the run to report its status
     "$@"; rc=$?; [ "$rc" -eq 3 ] && touch "$REQUEUE_FLAG"; exit "$rc"' rank \
    "$PY" launch/unlearn.py --ds_config "$DS_CONFIG" --config "$SWEEP_DIR/configs/$run.yaml" --resume auto --no_report
}
if [ "${#names[@]}" -eq 1 ]; then
  train "$name"
  rc=$?
else   # K runs share this allocation (and its GPU): one single-rank step each, a free port each
  pids=()
  for run in "${names[@]}"; do
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    (export MASTER_ADDR=127.0.0.1 MASTER_PORT=$port; train "$run" --overlap --ntasks=1 --nodes=1) &
    pids+=($!)
  done
  rc=0
  for pid in "${pids[@]}"; do wait "$pid" || { code=$?; [ "$rc" -eq 0 ] && rc=$code; }; done
fi
if [ -e "$REQUEUE_FLAG" ]; then   # checkpoint saved: run me again
  rm -f "$REQUEUE_FLAG"
  [ "$halving" = 1 ] && kill "$watcher"   # the next incarnation watches again
  echo "task $SLURM_ARRAY_TASK_ID saved after a preemption signal; requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
elif [ "$halving" = 1 ]; then
  mkdir -p "$SWEEP_DIR/runs/$name" && echo "$rc" > "$SWEEP_DIR/runs/$name/train.exit"
  wait "$watcher"   # it releases the eval jobs still held, then ends
  "$PY" -m unlearn.sweep.halving "$SWEEP_DIR" || echo "halving decision failed" >&2
fi
exit "$rc"
