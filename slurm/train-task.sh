#!/usr/bin/env bash
# One array task of a sweep (submitted by slurm/sweep.sh): its line of tasks.txt names one grid point,
# trained as one distributed run over this job's allocation, one rank per SLURM task (srun), on any
# number of nodes; or, with `runs_per_gpu: K` in the cluster profile, K grid points sharing the
# allocation's GPU: one job step of K tasks, task i training run i alone (its own rendezvous port).
#   slurm/train-task.sh SWEEP_DIR DS_CONFIG [MAX_RETRIES]
# Always --resume auto: a requeued task continues each run from its newest complete checkpoint.
#
# Stops reach every rank of every run, which saves at its next step and exits 3; this task then
# requeues itself (same job id: its eval jobs' afterany keeps waiting):
#   - sent to the job steps (scancel --signal, SLURM's preemption, --signal=USR1@N before the time
#     limit): each rank's wrapper passes it on (proctrack/cgroup signals only a step's direct children);
#   - sent to the batch step (scancel --full or --batch, some sites' preemption): this shell survives
#     it and passes SIGUSR1 on through srun, which runs detached from it (slurm/detach.sh says why).
# Other failures (a rank killed, e.g. out of memory; a traceback) are retried from the newest complete
# checkpoint up to MAX_RETRIES times (default 2); a user error (exit 2) or a divergence stop (exit 4)
# never: unlearn/sweep/outcome.py decides for each run and keeps runs/NAME/train.retries and
# train.exit (the exit status once the run ended for good), which --status and the report read. A
# task of K runs is requeued once if any run needs it; the next incarnation trains only those.
# In a `search: halving` sweep it releases the run's held eval jobs as checkpoints appear, and at the
# end (the run is over: halving counts it out of later rounds and decides them now) the rest.
set -uo pipefail
SWEEP_DIR=$1 DS_CONFIG=$2 MAX_RETRIES=${3:-2}
# `make setup`'s .venv unless UNLEARN_PYTHON names another Python (a job's shell has no environment active)
PY=${UNLEARN_PYTHON:-$([ -x "$PWD/.venv/bin/python" ] && echo "$PWD/.venv/bin/python" || echo python)}
read -r -a names <<< "$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$SWEEP_DIR/tasks.txt")"
[ "${#names[@]}" -gt 0 ] || { echo "no grid point $SLURM_ARRAY_TASK_ID in $SWEEP_DIR/tasks.txt" >&2; exit 2; }
name=${names[0]}
source slurm/detach.sh   # sbatch runs a copy of this script: paths are relative to the checkout (--chdir)
relay_stops USR1

# Rank 0's node is the rendezvous; its address as SLURM knows it (test nodes n1, n2 share localhost).
first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_ADDR=$(scontrol show node "$first" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
export MASTER_ADDR=${MASTER_ADDR:-$first}
# A port free now on this host, the allocation's first node, where rank 0 runs: a port derived from the
# job id collided with whatever held it (any outgoing connection may), and the run failed for good.
MASTER_PORT=$("$PY" -c 'from unlearn.sweep.jobs import free_ports; print(free_ports(1)[0])') || exit 1
export MASTER_PORT
JOB=${SLURM_ARRAY_JOB_ID}_$SLURM_ARRAY_TASK_ID
# The runs to train now: all, or those a requeue of this task named (the others ended for good).
RUNS=("${names[@]}")
[ -f "$SWEEP_DIR/logs/.requeued-$JOB" ] && read -r -a RUNS < "$SWEEP_DIR/logs/.requeued-$JOB"
echo "task $SLURM_ARRAY_TASK_ID (${RUNS[*]}): job $SLURM_JOB_ID, $SLURM_NTASKS rank(s) on $SLURM_JOB_NODELIST," \
     "rendezvous $MASTER_ADDR:$MASTER_PORT, restart ${SLURM_RESTART_COUNT:-0}"

# Each rank's `RUN EXIT`, one line each: srun's own status is not enough, since --kill-on-bad-exit
# may kill the other ranks before they exit 3 too.
export EXITS=$SWEEP_DIR/logs/.exits-$SLURM_JOB_ID
rm -f "$EXITS"
for run in "${RUNS[@]}"; do rm -f "$SWEEP_DIR/runs/$run/train.exit"; done   # running (again)
halving=0; grep -qx 'search: halving' "$SWEEP_DIR/sweep.yaml" && halving=1
if [ "$halving" = 1 ]; then   # evaluation while training: release held eval jobs as checkpoints appear
  (trap '' TERM USR1 USR2; exec "$PY" -m unlearn.sweep.halving --watch "$SWEEP_DIR" "$name") & watcher=$!
fi
export RUN_NAMES="${RUNS[*]}" CONFIGS=$SWEEP_DIR/configs PORTS=""
step=(--kill-on-bad-exit=1)   # one run: a rank that fails ends the others (they would wait in a collective)
if [ "${#RUNS[@]}" -gt 1 ]; then   # K runs: independent, so none ends another; a free port each
  k=${#RUNS[@]} cpus=$(( ${SLURM_CPUS_PER_TASK:-1} / ${#RUNS[@]} ))
  PORTS=$("$PY" -c 'import sys; from unlearn.sweep.jobs import free_ports; print(*free_ports(int(sys.argv[1])))' "$k")
  # one step of K tasks in the allocation's one task: --overcommit lets them share its CPUs and GPU
  step=(--kill-on-bad-exit=0 --nodes=1 --ntasks="$k" --ntasks-per-node="$k" --overcommit
        --cpus-per-task=$(( cpus > 0 ? cpus : 1 )))
fi
# RANK etc. per srun task; unlearn/distributed.py reads them.
detached_srun "${step[@]}" bash -c \
  'read -r -a runs <<< "$RUN_NAMES"; read -r -a ports <<< "$PORTS"
   if [ "${#runs[@]}" -gt 1 ]; then   # task i trains run i as a single-rank run
     run=${runs[$SLURM_PROCID]}
     export RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=${ports[$SLURM_PROCID]}
   else                               # every task is a rank of the one run
     run=${runs[0]}
     export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS
   fi
   trap "kill -TERM \$pid" TERM; trap "kill -USR1 \$pid" USR1   # outlive the run to report its status
   "$@" --config "$CONFIGS/$run.yaml" & pid=$!
   while wait "$pid"; rc=$?; [ "$rc" -gt 128 ] && kill -0 "$pid" 2>/dev/null; do :; done
   echo "$run $rc" >> "$EXITS"; exit "$rc"' rank \
  "$PY" launch/unlearn.py --ds_config "$DS_CONFIG" --resume auto --no_report
rc=$?
ranks=$SLURM_NTASKS; [ "${#RUNS[@]}" -gt 1 ] && ranks=1
next=$("$PY" -m unlearn.sweep.outcome "$SWEEP_DIR" "$MAX_RETRIES" "$STOPPED" "$JOB restart ${SLURM_RESTART_COUNT:-0}" \
       "$rc" "$ranks" "$EXITS" "${RUNS[@]}")
rm -f "$EXITS"
if [ "$next" = requeued ]; then   # the runs resume in the next incarnation
  [ "$halving" = 1 ] && kill "$watcher"   # which watches again
elif [ "$halving" = 1 ]; then
  wait "$watcher"   # it releases the eval jobs still held, then ends
  "$PY" -m unlearn.sweep.halving "$SWEEP_DIR" || echo "halving decision failed" >&2
fi
case $next in
  done) exit 0 ;;
  failed) exit $(( rc ? rc : 1 )) ;;   # a run lost for good: the task FAILED (srun may say 0 after a node loss)
  *) exit "$rc" ;;
esac
