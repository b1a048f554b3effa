#!/usr/bin/env bash
# A real one-node Slurm on this machine (Debian slurm-wlm + munge), for CI, tests and `make slurm-demo`.
#
#   sudo scripts/slurm-up.sh        # install if missing, write /etc/slurm/slurm.conf, start munged, slurmctld, slurmd
#   scripts/slurm-down.sh           # stop them again
#
# Idempotent: a second run with everything up only checks and prints the status line. Works without
# systemd (containers, CI VMs): the daemons are started directly. Refuses to replace a slurm.conf it did
# not write (SLURM_UP_FORCE=1 to back it up and replace it). Environment:
#   SLURM_UP_TIMEOUT   seconds to wait for the node to become idle (default 90)
#   SLURM_CLUSTER_NAME ClusterName (default storyadapter)
set -euo pipefail

MARKER="# written by storyadapter scripts/slurm-up.sh"
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
CLUSTER=${SLURM_CLUSTER_NAME:-storyadapter}
TIMEOUT=${SLURM_UP_TIMEOUT:-90}
LOG_DIR=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

say() { echo "slurm-up: $*" >&2; }
die() { echo "slurm-up: error: $*" >&2; exit 1; }
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts munged, slurmctld and slurmd)"

# 1. Packages.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
    || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || die "slurm-wlm and munge are not installed and apt-get is not available"
    say "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' maintainer scripts from starting services (there may be no init system to ask).
    policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
    fi
    rc=0
    { apt-get update -qq && apt-get install -y -qq -o Dpkg::Options::=--force-confdef \
        -o Dpkg::Options::=--force-confold slurm-wlm munge; } >"${TMPDIR:-/tmp}/slurm-up-apt.log" 2>&1 || rc=$?
    [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || { tail -n 20 "${TMPDIR:-/tmp}/slurm-up-apt.log" >&2; die "apt-get install slurm-wlm munge failed (exit $rc)"; }
fi
for tool in slurmctld slurmd sbatch sinfo scontrol munged munge unmunge; do
    command -v "$tool" >/dev/null || die "$tool not found after installing slurm-wlm and munge"
done

# 2. Munge: a key, then munged as the munge user.
id munge >/dev/null 2>&1 || die "the munge user does not exist (the munge package creates it)"
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    elif command -v create-munge-key >/dev/null; then
        create-munge-key -f
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- munged || die "munged did not start (see /var/log/munge/munged.log)"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null 2>&1 || die "munge credentials do not round-trip (see /var/log/munge/munged.log)"
fi

# 3. slurm.conf for this one node, from what slurmd detects.
node=$(hostname -s)
detected=$(slurmd -C 2>/dev/null | head -n 1)
case "$detected" in NodeName=*) ;; *) die "slurmd -C could not describe this machine: $detected" ;; esac
# Keep the hardware fields; address the node on loopback so no DNS is needed.
hardware=$(echo "$detected" | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' ')
cpus=$(echo "$detected" | tr ' ' '\n' | sed -n 's/^CPUs=//p')
mem=$(echo "$detected" | tr ' ' '\n' | sed -n 's/^RealMemory=//p')
{ [ -n "$cpus" ] && [ -n "$mem" ]; } || die "slurmd -C gave no CPUs/RealMemory: $detected"
def_mem=$((mem / cpus))

new_conf=$(cat <<EOF
$MARKER; rerun it to regenerate.
# One node, no cgroups, no accounting database: for CI, tests and demos on a single machine.
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
DefMemPerCPU=$def_mem
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldTimeout=60
SlurmdTimeout=120
InactiveLimit=0
MinJobAge=300
KillWait=30
Waittime=0
NodeName=$node NodeAddr=127.0.0.1 ${hardware}State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
)

changed=0
if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    [ "${SLURM_UP_FORCE:-0}" = 1 ] || die "$CONF exists and was not written by this script; set SLURM_UP_FORCE=1 to back it up and replace it"
    cp -p "$CONF" "$CONF.bak.$(date +%Y%m%d%H%M%S)"
fi
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    install -d -m 0755 "$CONF_DIR"
    printf '%s\n' "$new_conf" > "$CONF.tmp" && mv "$CONF.tmp" "$CONF"
    changed=1
    say "wrote $CONF ($node: $cpus CPUs, ${mem} MB)"
fi
install -d -m 0755 "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd

# 4. Daemons (restarted when the configuration changed).
if [ "$changed" = 1 ]; then
    for pidfile in "$SLURMD_PID" "$CTLD_PID"; do
        if running "$pidfile"; then
            kill "$(cat "$pidfile")"
            for _ in $(seq 100); do running "$pidfile" || break; sleep 0.1; done
        fi
    done
fi
if ! running "$CTLD_PID"; then
    say "starting slurmctld"
    slurmctld || die "slurmctld did not start (see $LOG_DIR/slurmctld.log)"
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q UP || { tail -n 20 "$LOG_DIR/slurmctld.log" >&2 || true; die "slurmctld is not answering (see $LOG_DIR/slurmctld.log)"; }
if ! running "$SLURMD_PID"; then
    say "starting slurmd"
    slurmd || die "slurmd did not start (see $LOG_DIR/slurmd.log)"
fi

# 5. Wait (bounded) for the node to be usable; a node left down or drained by an earlier run is resumed.
state=""
deadline=$((SECONDS + TIMEOUT))
while [ "$SECONDS" -lt "$deadline" ]; do
    state=$(sinfo -h -n "$node" -o %T 2>/dev/null | head -n 1)
    case "$state" in
        idle|mixed|allocated|completing) break ;;
        down*|drain*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    *) tail -n 20 "$LOG_DIR/slurmd.log" >&2 || true
       die "node $node is '${state:-unknown}' after ${TIMEOUT}s (see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log)" ;;
esac
echo "slurm-up: cluster $CLUSTER up: node $node $state, ${cpus} CPUs, ${mem} MB, partition debug (slurm $(sinfo -V | awk '{print $2}'))"
