#!/usr/bin/env bash
# slurm/local-cluster.sh start|stop|status - a throwaway SLURM cluster on this host, for tests and CI.
#
# Runs as root without systemd, every file under $UNLEARN_SLURM_DIR, loopback only:
#   munged -> mariadbd -> slurmdbd (so `sacct` works; submitit polls it) -> slurmctld -> slurmd x NODES
# NODES slurmd on one host (n1..nN) let a test run one job across two "nodes".
# After `start`:  export SLURM_CONF=$UNLEARN_SLURM_DIR/etc/slurm.conf  (or source .../env.sh)
#
# Knobs (environment):
#   UNLEARN_SLURM_DIR   base folder                                (default /tmp/unlearn-slurm)
#   UNLEARN_SLURM_NODES slurmd daemons = node names n1..nN         (default 2)
#   UNLEARN_SLURM_CPUS  CPUs advertised per node; may exceed nproc (default 4: 2 cores run 8 tasks)
#   UNLEARN_SLURM_PROCTRACK  cgroup | linuxproc (default cgroup). cgroup: proctrack/cgroup + task/cgroup
#                       (cgroup/v1, nothing constrained), what most clusters run, each slurmd's jobs under
#                       /sys/fs/cgroup/freezer/slurm_<node>; a stop sent to a job step then reaches only its
#                       tasks, not their children (linuxproc: the whole tree), which is the harder case for
#                       the ranks' relays. Falls back to linuxproc, saying so, where the cgroup v1 freezer
#                       hierarchy is not writable.
#   UNLEARN_SLURM_PORTS "CTLD DBD SQL NODE0": slurmctld, slurmdbd, mariadbd, first slurmd port
#                       (default "26817 26819 26306 26901"); another set runs a second cluster beside one
set -euo pipefail

BASE=${UNLEARN_SLURM_DIR:-/tmp/unlearn-slurm}
NODES=${UNLEARN_SLURM_NODES:-2}
CPUS=${UNLEARN_SLURM_CPUS:-4}
PROCTRACK=${UNLEARN_SLURM_PROCTRACK:-cgroup}
# Ports away from SLURM's defaults (6817-6819) and the shared reference cluster's.
read -r CTLD_PORT DBD_PORT SQL_PORT NODE_PORT0 <<< "${UNLEARN_SLURM_PORTS:-26817 26819 26306 26901}"
[ -n "$NODE_PORT0" ] || { echo "UNLEARN_SLURM_PORTS: want 4 ports \"CTLD DBD SQL NODE0\", got '$UNLEARN_SLURM_PORTS'" >&2; exit 2; }
case $PROCTRACK in linuxproc|cgroup) ;; *) echo "UNLEARN_SLURM_PROCTRACK: want linuxproc or cgroup, got '$PROCTRACK'" >&2; exit 2;; esac
ETC=$BASE/etc RUN=$BASE/run LOG=$BASE/log STATE=$BASE/state
SOCK=$RUN/munge.socket
export SLURM_CONF=$ETC/slurm.conf

say() { echo "[local-cluster] $*"; }
fail() {
  say "error: $*"
  for f in "$LOG"/*.log; do [ -s "$f" ] && { echo "--- $f"; tail -n 10 "$f"; }; done 2>/dev/null || true
  stop >/dev/null 2>&1 || true
  exit 1
}
# wait_until SECONDS WHAT CMD...: poll CMD every 0.2 s
wait_until() {
  local end=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || fail "timed out waiting for $what"
    sleep 0.2
  done
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
idle_nodes() { sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | grep -c ' idle$'; }
all_idle() { [ "$(idle_nodes)" -eq "$NODES" ]; }
is_up() { [ -f "$SLURM_CONF" ] && scontrol ping >/dev/null 2>&1 && [ -n "$(sinfo -h -o %N 2>/dev/null)" ]; }

install_missing() {
  local pkgs=() pair
  for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge slurmdbd:slurmdbd \
              mariadbd:mariadb-server-core; do
    command -v "${pair%%:*}" >/dev/null || pkgs+=("${pair#*:}")
  done
  [ ${#pkgs[@]} -eq 0 ] && return 0
  say "apt-get install ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

# cgroup_writable: proctrack/cgroup (cgroup/v1) needs a freezer hierarchy it may create folders in
cgroup_writable() {
  local probe=/sys/fs/cgroup/freezer/unlearn-probe-$$
  mkdir "$probe" 2>/dev/null && rmdir "$probe"
}

write_configs() {
  head -c 1024 /dev/urandom > "$ETC/munge.key"; chmod 400 "$ETC/munge.key"
  : > "$ETC/plugstack.conf"
  local mem=$(( $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) / 2 / NODES ))
  cat > "$SLURM_CONF" <<CONF
# written by slurm/local-cluster.sh
ClusterName=unlearnci
# job ids of their own per cluster (the ports are): two clusters on one host share node names, so
# under proctrack/cgroup equal ids would share /sys/fs/cgroup/freezer/slurm_nX/uid_U/job_J
FirstJobId=$((CTLD_PORT * 1000))
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire (s): also how long a requeued job waits before it may start again (default 120)
AuthInfo=socket=$SOCK,cred_expire=5
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd-%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
PlugStackConfig=$ETC/plugstack.conf
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/$PROCTRACK
TaskPlugin=task/$([ "$PROCTRACK" = cgroup ] && echo cgroup || echo none)
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# start the next job as soon as one ends (the default waits up to 3 s); scheduling passes every 2 s,
# so a requeued job starts soon after its cred_expire hold (default passes: 60 s, backfill 30 s)
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
# per-CPU memory default; without it a job takes a whole node's memory and jobs run one by one
DefMemPerCPU=256
# SIGTERM -> SIGKILL grace (s): enough for a tiny run to save at its next step boundary
KillWait=5
# advertise more CPUs than the host has, so 4 tiny tasks run at once on 2 cores
SlurmdParameters=config_overrides
ReturnToService=2
# finished jobs stay known for 1 h: afterok on a purged job id would count as satisfied
MinJobAge=3600
# a dependency that can never be met (afterok on a failed job) cancels the dependent job
DependencyParameters=kill_invalid_depend
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$SOCK
JobAcctGatherType=jobacct_gather/linux
NodeName=n[1-$NODES] NodeHostname=localhost NodeAddr=127.0.0.1 Port=[$NODE_PORT0-$((NODE_PORT0 + NODES - 1))] CPUs=$CPUS RealMemory=$mem State=UNKNOWN
# Preemption as sites run it: a job in "urgent" (higher PriorityTier) that needs a node takes it from the
# debug jobs there; they get SIGCONT + SIGTERM, SIGKILL GraceTime s later, and SLURM requeues them.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
CONF
  # read by the cgroup plugins only. Nothing constrained: the nodes advertise more CPUs than the host
  # has, and jobs stay within the memory of the container this runs in.
  cat > "$ETC/cgroup.conf" <<CONF
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
CONF
  cat > "$ETC/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$SQL_PORT
StorageUser=root
StorageLoc=slurm_acct_db
CONF
  chmod 600 "$ETC/slurmdbd.conf"   # slurmdbd refuses a readable config
  echo "export SLURM_CONF=$SLURM_CONF" > "$BASE/env.sh"
}

start() {
  [ "$(id -u)" -eq 0 ] || { say "error: must run as root (daemons run as root, no systemd)"; exit 1; }
  if is_up; then say "already up: export SLURM_CONF=$SLURM_CONF"; return 0; fi
  install_missing || fail "apt-get install failed"
  stop >/dev/null 2>&1 || true
  rm -rf "$ETC" "$RUN" "$LOG" "$STATE"
  mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/mysql"
  for i in $(seq 1 "$NODES"); do mkdir -p "$STATE/slurmd-n$i"; done
  chmod 700 "$ETC"; chmod 755 "$RUN"    # munged wants its socket folder world-searchable
  if [ "$PROCTRACK" = cgroup ] && ! cgroup_writable; then
    say "cgroup v1 freezer hierarchy not writable (/sys/fs/cgroup/freezer): proctrack/linuxproc instead"
    PROCTRACK=linuxproc
  fi
  write_configs
  local t0=$SECONDS
  munged --socket="$SOCK" --key-file="$ETC/munge.key" --pid-file="$RUN/munged.pid" \
         --log-file="$LOG/munged.log" --seed-file="$STATE/munged.seed" || fail "munged did not start"
  wait_until 10 "munge socket" test -S "$SOCK"
  # --skip-grant-tables: a private throwaway database, reachable from loopback only
  setsid "$(command -v mariadbd || command -v mysqld)" --no-defaults --user=root --datadir="$STATE/mysql" \
     --socket="$RUN/mysqld.sock" --pid-file="$RUN/mariadbd.pid" --bind-address=127.0.0.1 \
     --port=$SQL_PORT --skip-grant-tables --log-error="$LOG/mariadbd.log" \
     --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
  wait_until 30 "mariadbd on port $SQL_PORT" port_open $SQL_PORT
  slurmdbd || fail "slurmdbd did not start"      # reads slurmdbd.conf beside $SLURM_CONF
  wait_until 30 "slurmdbd on port $DBD_PORT" port_open $DBD_PORT
  slurmctld -f "$SLURM_CONF" || fail "slurmctld did not start"
  wait_until 30 "slurmctld" scontrol ping
  for i in $(seq 1 "$NODES"); do slurmd -f "$SLURM_CONF" -N "n$i" || fail "slurmd n$i did not start"; done
  wait_until 60 "$NODES idle node(s)" all_idle
  say "up in $((SECONDS - t0)) s: $NODES nodes x $CPUS CPUs, proctrack/$PROCTRACK; export SLURM_CONF=$SLURM_CONF"
}

# stop_pid PIDFILE NAME: SIGTERM the daemon named in PIDFILE (only if it still is NAME), wait, then SIGKILL.
stop_pid() {
  local pf=$1 name=$2 pid i
  [ -s "$pf" ] || return 0
  pid=$(cat "$pf")
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pf"
}

stop() {
  [ -d "$RUN" ] || { say "not running"; return 0; }
  if is_up; then   # cancel leftover jobs first so no job process outlives its slurmd
    local jobs; jobs=$(squeue -h -o %A | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      scancel $jobs || true
      for _ in $(seq 1 50); do [ -z "$(squeue -h -o %A)" ] && break; sleep 0.2; done
    fi
  fi
  local pf
  for pf in "$RUN"/slurmd-*.pid; do [ -e "$pf" ] && stop_pid "$pf" slurmd; done
  stop_pid "$RUN/slurmctld.pid" slurmctld
  stop_pid "$RUN/slurmdbd.pid" slurmdbd
  stop_pid "$RUN/mariadbd.pid" mariadbd
  stop_pid "$RUN/munged.pid" munged
  say "stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if is_up; then sinfo; else say "not running"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
