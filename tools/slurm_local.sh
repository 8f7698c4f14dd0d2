#!/usr/bin/env bash
# A one-node SLURM on this machine, for the tests against a real scheduler (tests/test_slurm.py)
# and for trying `llm-jax sweep --launcher=submitit` by hand: `bash tools/slurm_local.sh` as root
# (or with sudo), on Debian or Ubuntu.
#
# Installs slurm-wlm and munge from the distribution's packages where they are missing, writes
# /etc/slurm/slurm.conf for this host (one node with its CPUs and memory, one partition `debug`,
# no accounting database), starts munged, slurmctld and slurmd as daemons that outlive this script
# and waits until `sinfo` shows the node idle. Run again, it leaves a working cluster alone and
# restarts one that does not answer (daemons gone, or left over from another boot). It never
# overwrites a slurm.conf that it did not write.
set -euo pipefail

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
CONF=/etc/slurm/slurm.conf
MARK="# written by llm-jax tools/slurm_local.sh"
SPOOL=/var/spool/slurm-llm-jax
LOGS=/var/log/slurm-llm-jax
NODE=$(hostname -s)
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}

say() { echo "slurm_local: $*" >&2; }
fail() { say "error: $*"; exit 1; }

# a daemon of ours runs: alive NAME PIDFILE
alive() { [ -s "$2" ] && [ "$(cat /proc/"$(cat "$2")"/comm 2>/dev/null)" = "$1" ]; }
# the node answers: idle, or running jobs (mixed, allocated, completing)
node_up() { timeout 10 sinfo -h -n "$NODE" -o %t 2>/dev/null | grep -qxE 'idle|mix|alloc|comp'; }
node_idle() { timeout 10 sinfo -h -n "$NODE" -o %t 2>/dev/null | grep -qx 'idle'; }

# 1. the packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
   ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || fail "no apt-get: install slurm-wlm and munge by hand"
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null ||
    fail "apt-get install slurm-wlm munge failed"
fi

# 2. the configuration: this host's CPUs and memory (MiB, less a little for the system)
if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
  node_up && { say "using the SLURM already configured here ($CONF)"; exit 0; }
  fail "$CONF exists and was not written by this script: start that cluster instead"
fi
CPUS=$(nproc)
MEM=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
NEW=$(cat <<CONF
$MARK: a one-node cluster for tests
ClusterName=llmjax
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
# a requeued job may start again after cred_expire seconds (120 by default)
AuthInfo=cred_expire=10
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=/run/slurmctld-llm-jax.pid
SlurmdPidFile=/run/slurmd-llm-jax.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# the scheduler looks at the queue every second: a requeued job, eligible again after
# cred_expire, starts then (the main loop runs every 60 s by default, and on events only)
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# a job that asks no memory gets this much per CPU, so that jobs share the node
DefMemPerCPU=1024
# no accounting database (as on many small clusters): sacct knows nothing
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# finished jobs leave squeue soon: their state then comes from their files
MinJobAge=10
# time to save a checkpoint between SIGTERM and SIGKILL (scancel, requeue, preemption)
KillWait=60
InactiveLimit=0
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
)
CHANGED=0
if [ "$(cat "$CONF" 2>/dev/null)" != "$NEW" ]; then
  $SUDO mkdir -p /etc/slurm
  echo "$NEW" | $SUDO tee "$CONF" >/dev/null
  CHANGED=1
fi

if [ "$CHANGED" = 0 ] && alive slurmctld /run/slurmctld-llm-jax.pid &&
   alive slurmd /run/slurmd-llm-jax.pid && node_up; then
  say "the node $NODE is up: $(sinfo -h -n "$NODE" -o %t) (sinfo)"
  exit 0
fi

# 3. the daemons: munged (with a key), slurmctld, slurmd; stale ones (or ones with another
# configuration) stopped first
stop() {  # the daemon named $1, by its pid file (never by name: others may run one)
  local pidfile=$2 pid
  if alive "$1" "$pidfile"; then
    pid=$(cat "$pidfile")
    $SUDO kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [ -e /proc/"$pid" ] || break; sleep 0.2; done
    [ -e /proc/"$pid" ] && $SUDO kill -9 "$pid" 2>/dev/null
  fi
  $SUDO rm -f "$pidfile"
}
stop slurmd /run/slurmd-llm-jax.pid
stop slurmctld /run/slurmctld-llm-jax.pid
$SUDO mkdir -p "$SPOOL/ctld" "$SPOOL/d" "$LOGS" /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  $SUDO mkdir -p /etc/munge
  $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
$SUDO chown munge:munge /etc/munge /etc/munge/munge.key /run/munge
$SUDO chmod 0700 /etc/munge
$SUDO chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  stop munged /run/munge/munged.pid
  $SUDO rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  if [ -z "$SUDO" ]; then runuser -u munge -- munged; else sudo -u munge munged; fi ||
    fail "munged did not start (see /var/log/munge/munged.log)"
  munge -n | unmunge >/dev/null || fail "munge does not answer (see /var/log/munge/munged.log)"
fi
# -c: a cluster (re)started here forgets the jobs of the one before (their processes are gone)
$SUDO slurmctld -c || fail "slurmctld did not start (see $LOGS/slurmctld.log)"
$SUDO slurmd || fail "slurmd did not start (see $LOGS/slurmd.log)"

for _ in $(seq "$WAIT_S"); do
  if node_idle; then
    say "the node $NODE is up and idle: partition debug, $CPUS CPUs, $MEM MiB"
    exit 0
  fi
  # a node that was down (a previous boot) comes back once slurmd registers
  timeout 10 scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
  sleep 1
done
fail "the node $NODE is not idle after ${WAIT_S}s: $(sinfo -h -N -o '%N %t %E' 2>&1 | head -1)" \
     "(see $LOGS/slurmctld.log and slurmd.log)"
