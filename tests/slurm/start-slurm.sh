#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine for tests/test_slurm.py (Debian's slurm-wlm).
#
# Installs slurmctld, slurmd, slurm-client and munge if missing, writes /etc/slurm/slurm.conf and
# gres.conf for one node with one GPU generic resource, starts munged, slurmctld and slurmd (only
# those not already running), waits until the node is idle and runs a GPU smoke job.
# Needs root (apt-get, /etc/slurm, daemons); needs neither systemd nor cgroups.
# The SLURM facts this relies on are in docs/slurm.md.
#
# Settings (environment):
#   SLURM_CI_DIR   state, pid files and logs (default ${TMPDIR:-/tmp}/astroflow-slurm)
#   SLURM_CI_MEM   node RealMemory in MB (default 80% of this machine's memory)
#   SLURM_CI_DBD   1 = also run MariaDB and slurmdbd so that sacct works (default 0: no
#                  accounting database; sacct fails, poll with squeue)
#
# Exit status 77, and nothing is changed: /etc/slurm/slurm.conf exists and was not written by
# this script (a real cluster's), or slurmctld or slurmd already run from another state folder.
set -euo pipefail

T0=${EPOCHREALTIME/./}
log() { local ms=$(( (${EPOCHREALTIME/./} - T0) / 1000 )); printf '[start-slurm %3d.%03ds] %s\n' $((ms/1000)) $((ms%1000)) "$*"; }
die() { echo "start-slurm.sh: $*" >&2; exit 1; }

DIR=${SLURM_CI_DIR:-${TMPDIR:-/tmp}/astroflow-slurm}
MEM=${SLURM_CI_MEM:-$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)}
DBD=${SLURM_CI_DBD:-0}
HOST=$(hostname -s)
CPUS=$(nproc)
CLUSTER=astroflow
PARTITION=batch
# The first line of the config we write: a config without it belongs to someone else.
MARKER="# written by astroflow tests/slurm/start-slurm.sh"

[ "$(id -u)" = 0 ] || die "must run as root"
if [ -s /etc/slurm/slurm.conf ] && [[ "$(head -n 1 /etc/slurm/slurm.conf)" != "$MARKER"* ]]; then
  echo "start-slurm.sh: /etc/slurm/slurm.conf was not written by this script; leaving it alone" >&2
  exit 77
fi
# Daemons of another state folder (another test session, or a crashed one) hold the ports.
for daemon in slurmctld slurmd; do
  for pid in $(pgrep -x "$daemon" || true); do
    if [ "$pid" != "$(cat "$DIR/state/$daemon.pid" 2>/dev/null)" ]; then
      echo "start-slurm.sh: $daemon (pid $pid) runs, but not from $DIR; leaving it alone" >&2
      exit 77
    fi
  done
done

# ------------------------------------------------------------------ packages
pkgs=(slurmctld slurmd slurm-client munge)
[ "$DBD" = 1 ] && pkgs+=(slurmdbd mariadb-server mariadb-client)
need=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # wait for another apt-get (CI images update in the background) instead of failing
  apt-get -o DPkg::Lock::Timeout=300 update -q >/dev/null
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
log "packages ok: $(slurmctld -V)"

mkdir -p "$DIR/log" "$DIR/state/ctld" "$DIR/state/d"
getent hosts "$HOST" >/dev/null || { echo "127.0.0.1 $HOST" >> /etc/hosts; log "added $HOST to /etc/hosts"; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # tries (0.1 s each), command...
  local n=$1; shift
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  "$@" >/dev/null 2>&1
}
# Remember the daemons this script started, so that stop-slurm.sh stops only those.
ours() { cp "$2" "$DIR/state/$1.ours"; }

# ------------------------------------------------------------------ config
if [ "$DBD" = 1 ]; then
  ACCT="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT="# no slurmdbd: sacct does not work; finished jobs are appended to JobCompLoc
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
CONF_NEW="$MARKER (SLURM_CI_DBD=$DBD)
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/state/slurmctld.pid
SlurmdPidFile=$DIR/state/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups in a container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# without a default, a job that names no memory is given the whole node's
DefMemPerCPU=1000
# backfill every second: CPU jobs start beside a job that waits for the GPU
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
MpiDefault=none
ReturnToService=2
# finished jobs stay visible to squeue for 5 min (the plugin polls with squeue without slurmdbd)
MinJobAge=300
$ACCT
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
# A GPU needs a device file: slurmd drops a count-only GPU and the node goes INVAL.
GRES_NEW="NodeName=$HOST Name=gpu File=/dev/null"

conf_changed=0
mkdir -p /etc/slurm
if [ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" != "$CONF_NEW" ]; then
  printf '%s\n' "$CONF_NEW" > /etc/slurm/slurm.conf; conf_changed=1
fi
if [ "$(cat /etc/slurm/gres.conf 2>/dev/null)" != "$GRES_NEW" ]; then
  printf '%s\n' "$GRES_NEW" > /etc/slurm/gres.conf; conf_changed=1
fi
[ $conf_changed = 1 ] && log "wrote /etc/slurm/slurm.conf and gres.conf"

# ------------------------------------------------------------------ munge
if [ ! -s /etc/munge/munge.key ]; then
  mungekey --create --force
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 755 /run/munge
if alive /run/munge/munged.pid && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "munged already running (pid $(cat /run/munge/munged.pid))"
else
  runuser -u munge -- /usr/sbin/munged --force
  wait_for 50 bash -c 'munge -n | unmunge' || die "munged does not answer"
  ours munged /run/munge/munged.pid
  log "munged started (pid $(cat /run/munge/munged.pid))"
fi

# ------------------------------------------------------------------ MariaDB + slurmdbd
if [ "$DBD" = 1 ]; then
  install -d -o mysql -g root -m 755 /run/mysqld
  if mariadb-admin --socket=/run/mysqld/mysqld.sock ping >/dev/null 2>&1; then
    log "mariadb already running"
  else
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    touch "$DIR/log/mariadb.log"; chown mysql "$DIR/log/mariadb.log"
    setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql \
      --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid \
      --skip-networking --log-error="$DIR/log/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_for 300 mariadb-admin --socket=/run/mysqld/mysqld.sock ping || die "mariadb did not start; see $DIR/log/mariadb.log"
    wait_for 50 test -s /run/mysqld/mysqld.pid
    ours mariadbd /run/mysqld/mysqld.pid
    log "mariadb started (pid $(cat /run/mysqld/mysqld.pid))"
  fi
  mariadb --socket=/run/mysqld/mysqld.sock -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmci'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  DBD_NEW="$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/state/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmci
StorageLoc=slurm_acct_db"
  dbd_changed=0
  if [ "$(cat /etc/slurm/slurmdbd.conf 2>/dev/null)" != "$DBD_NEW" ]; then
    printf '%s\n' "$DBD_NEW" > /etc/slurm/slurmdbd.conf; chmod 600 /etc/slurm/slurmdbd.conf; dbd_changed=1
  fi
  if alive "$DIR/state/slurmdbd.pid" && [ $dbd_changed = 0 ]; then
    log "slurmdbd already running (pid $(cat "$DIR/state/slurmdbd.pid"))"
  else
    if alive "$DIR/state/slurmdbd.pid"; then kill "$(cat "$DIR/state/slurmdbd.pid")"; sleep 1; fi
    slurmdbd
    wait_for 100 sacctmgr -n show cluster || die "slurmdbd does not answer; see $DIR/log/slurmdbd.log"
    ours slurmdbd "$DIR/state/slurmdbd.pid"
    log "slurmdbd started (pid $(cat "$DIR/state/slurmdbd.pid"))"
  fi
  if [ -z "$(sacctmgr -n -P show cluster "$CLUSTER" format=cluster)" ]; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    log "sacctmgr: added cluster $CLUSTER"
  fi
fi

# ------------------------------------------------------------------ slurmctld, slurmd
stop_pid() { local pf=$1; alive "$pf" || return 0; local p; p=$(cat "$pf"); kill "$p"; for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; }
if [ $conf_changed = 1 ] && { alive "$DIR/state/slurmctld.pid" || alive "$DIR/state/slurmd.pid"; }; then
  log "config changed: restarting slurmctld and slurmd"
  stop_pid "$DIR/state/slurmd.pid"; stop_pid "$DIR/state/slurmctld.pid"
fi
if alive "$DIR/state/slurmctld.pid"; then
  log "slurmctld already running (pid $(cat "$DIR/state/slurmctld.pid"))"
else
  slurmctld
  wait_for 50 alive "$DIR/state/slurmctld.pid"
  log "slurmctld started (pid $(cat "$DIR/state/slurmctld.pid"))"
fi
wait_for 100 bash -c 'scontrol ping | grep -q "is UP"' || { tail -n 30 "$DIR/log/slurmctld.log" >&2; die "slurmctld does not answer"; }
if alive "$DIR/state/slurmd.pid"; then
  log "slurmd already running (pid $(cat "$DIR/state/slurmd.pid"))"
else
  slurmd
  wait_for 50 alive "$DIR/state/slurmd.pid"
  log "slurmd started (pid $(cat "$DIR/state/slurmd.pid"))"
fi

# ------------------------------------------------------------------ wait for the node
state=""
for _ in $(seq 150); do
  state=$(sinfo -h -n "$HOST" -o '%T' 2>/dev/null || true)
  case "$state" in
    idle|mixed|allocated|completing) break ;;
    *drain*|*down*|*inval*|*fail*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.2
done
case "$state" in
  idle|mixed|allocated|completing) ;;
  *) scontrol show node "$HOST" >&2; tail -n 30 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2
     die "node $HOST not ready (state '$state')" ;;
esac
log "node $HOST is $state: $(sinfo -h -N -o '%N cpus=%c mem=%m gres=%G partition=%P')"

# ------------------------------------------------------------------ smoke test
out=$(srun -N1 -n1 --gres=gpu:1 --mem=100 -t 1 bash -c 'echo "job=$SLURM_JOB_ID CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"')
log "smoke: srun --gres=gpu:1 -> $out"
[[ $out == *CUDA_VISIBLE_DEVICES=0 ]] || die "a GPU job did not see CUDA_VISIBLE_DEVICES=0"
if [ "$DBD" = 1 ]; then
  jid=${out#job=}; jid=${jid%% *}
  wait_for 50 bash -c "sacct -n -X -j $jid -o State | grep -q COMPLETED" || die "sacct does not show job $jid"
  log "smoke: sacct -j $jid -> $(sacct -n -X -P -j "$jid" -o JobID,State,AllocTRES)"
fi
log "SLURM ready (SLURM_CI_DBD=$DBD, state and logs in $DIR)"
