#!/usr/bin/env bash
# Stop what start-slurm.sh started, by pid: cancel the jobs left, stop slurmd and slurmctld, and
# slurmdbd, mariadbd and munged only where start-slurm.sh started them (a *.ours marker).
# Idempotent. Packages, /etc/slurm and the state folder stay.
set -uo pipefail
DIR=${SLURM_CI_DIR:-${TMPDIR:-/tmp}/astroflow-slurm}

stop_pid() {  # name pid
  local name=$1 pid=$2
  if ! kill -0 "$pid" 2>/dev/null; then echo "$name: not running (pid $pid)"; return 0; fi
  kill -TERM "$pid"
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name: pid $pid still alive after 15 s, sending KILL"; kill -KILL "$pid" 2>/dev/null || true
  fi
  echo "$name: stopped (pid $pid)"
}
stop_pidfile() {  # name pidfile
  [ -s "$2" ] || { echo "$1: no pid file"; return 0; }
  stop_pid "$1" "$(cat "$2")"; rm -f "$2"
}
stop_ours() {  # name: only if start-slurm.sh recorded that it started it
  local m="$DIR/state/$1.ours"
  [ -s "$m" ] || { echo "$1: not started by start-slurm.sh, left alone"; return 0; }
  stop_pid "$1" "$(cat "$m")"; rm -f "$m"
}

if [ -s "$DIR/state/slurmctld.pid" ] && kill -0 "$(cat "$DIR/state/slurmctld.pid")" 2>/dev/null; then
  # jobs still running would keep slurmd waiting on them
  scancel --user="$(id -un)" 2>/dev/null || true
fi
stop_pidfile slurmd "$DIR/state/slurmd.pid"
stop_pidfile slurmctld "$DIR/state/slurmctld.pid"
stop_ours slurmdbd
stop_ours mariadbd
stop_ours munged
