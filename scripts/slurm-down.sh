#!/usr/bin/env bash
# Stop the one-node Slurm started by scripts/slurm-up.sh: slurmd, slurmctld, then munged.
# Running jobs are cancelled first. Packages and configuration stay; `--purge` also clears Slurm's saved
# state and logs. Idempotent: stopping what is not running is not an error.
set -euo pipefail

say() { echo "slurm-down: $*" >&2; }
[ "$(id -u)" = 0 ] || { echo "slurm-down: error: must run as root" >&2; exit 1; }

stop() {  # stop the daemon whose pid file is $1, waiting up to 10 s
    local pidfile=$1 name=$2 pid
    [ -s "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    say "stopping $name ($pid)"
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    rm -f "$pidfile"
}

if command -v squeue >/dev/null && scontrol ping 2>/dev/null | grep -q UP; then
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        say "cancelling jobs: ${jobs//$'\n'/ }"
        # shellcheck disable=SC2086
        scancel $jobs || true
    fi
fi
stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
stop /run/munge/munged.pid munged

if [ "${1:-}" = "--purge" ]; then
    rm -rf /var/spool/slurmctld/* /var/spool/slurmd/* /var/log/slurm/*
    say "cleared /var/spool/slurmctld, /var/spool/slurmd and /var/log/slurm"
fi
echo "slurm-down: stopped"
