# Sourced by the batch script of a sweep's training task (slurm/train-task.sh; launch/sweep.py's submitit
# jobs through their setup lines), so that a stop sent to the batch step reaches the ranks:
#
#   relay_stops SIGNAL      this shell survives SIGTERM/SIGUSR1/SIGUSR2 and passes each on to srun as
#                           SIGNAL (srun forwards it to every task); STOPPED=1 records that one came
#   detached_srun ARGS...   srun ARGS outside this shell's process tree and session; returns its status
#
# Why: a stop may come to the batch step as well as to the job steps (scancel --full or --batch, some
# sites' preemption). Under proctrack/linuxproc and proctrack/cgroup alike it reaches the batch shell's
# process group (tests/test_slurm.py::test_which_processes_each_stop_reaches), srun included if started
# there, and srun turns a SIGTERM it receives into SIGKILL for its whole step ("forcing job termination",
# srun(1)): the ranks would die before they could save. Started through a double fork and setsid, srun
# is in a process group and session of its own. A bash trap runs only once the command it waits for returns,
# hence `read` on a pipe (interrupted by trapped signals) instead of waiting for srun in the foreground.

STOPPED=0
DETACHED_PID=

relay_stops() {
  # shellcheck disable=SC2064  # the relay signal is fixed now
  trap "STOPPED=1; [ -n \"\$DETACHED_PID\" ] && kill -$1 \"\$DETACHED_PID\" 2>/dev/null" TERM USR1 USR2
}

detached_srun() {
  local out fd rc
  exec {out}>&1
  # ( ... & ) leaves the new session's shell to init; it reports srun's pid, then srun's exit status.
  # srun still dies with this shell (SIGKILL: its step goes at once), as it would in its process tree:
  # a job killed for good (node failure, cancel) must not leave its step behind.
  exec {fd}< <( (OUT=$out BATCH=$$ setsid bash -c '
    srun "$@" >&"$OUT" & echo $!
    while kill -0 $! 2>/dev/null; do kill -0 "$BATCH" 2>/dev/null || kill -KILL $!; sleep 1; done
    wait $!; echo $?' srun "$@" &) )
  read -r -u "$fd" DETACHED_PID
  until read -r -u "$fd" rc; do
    [ $? -gt 128 ] || { rc=137; break; }   # >128: a trapped signal interrupted read; else EOF, status lost
  done
  exec {fd}<&- {out}>&-
  DETACHED_PID=
  return "$rc"
}
