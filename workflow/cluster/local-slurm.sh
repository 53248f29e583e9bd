#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying and testing the cluster path
# (docs/WORKFLOW.md, "A SLURM cluster on one machine"). Run as root:
#
#   workflow/cluster/local-slurm.sh start    # install slurm-wlm and munge where missing, configure, start, wait for idle
#   workflow/cluster/local-slurm.sh status   # the daemons this script started, and sinfo
#   workflow/cluster/local-slurm.sh stop     # cancel the cluster's jobs, stop exactly the daemons this script started
#
# Everything lives in one state folder ($LOCAL_SLURM_DIR, default .slurm/ in the checkout): slurm.conf,
# the munge key and socket, the daemons' pid files, logs and spool. The daemons listen on free ports
# chosen at start and authenticate through their own munge socket, so a system SLURM or munge on the
# same machine is neither used nor touched. Clients (sbatch, squeue, Snakemake's executor) find it with
#   source <state folder>/env.sh     # SLURM_CONF, and a PATH whose srun keeps SLURM_CONF inside jobs
# Both calls are idempotent: `start` on a running cluster only waits for the node; `stop` on a
# stopped one does nothing.
#
# The node offers a `cpu` and a `gpu` partition. It declares LOCAL_SLURM_CPUS (default 16) CPUs and
# LOCAL_SLURM_MEM_MB (default 65536) MB whatever the hardware (SlurmdParameters=config_overrides), so
# the requests of profiles/slurm are accepted as they are; nothing is enforced (task/none, no cgroups),
# jobs share the real cores. No GRES: the node has no GPU to declare, so profiles/slurm-local drops
# the `gpu` requests. No accounting storage: status is polled with squeue.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE="${LOCAL_SLURM_DIR:-$here/../../.slurm}"
CPUS="${LOCAL_SLURM_CPUS:-16}"
MEM_MB="${LOCAL_SLURM_MEM_MB:-65536}"
WAIT_S="${LOCAL_SLURM_WAIT_S:-120}"
DAEMONS=(munged slurmctld slurmd)

die() { echo "local-slurm: $*" >&2; exit 1; }

usage() { die "usage: $0 start|stop|status (state folder: \$LOCAL_SLURM_DIR, default .slurm/ in the checkout)"; }

# The pid recorded for a daemon, if that process is alive and is that daemon reading this state
# folder (a pid reused by another program after a crash is never ours).
our_pid() {
    local name=$1 pid
    [[ -f "$STATE/pids/$name" ]] || return 1
    pid=$(<"$STATE/pids/$name")
    [[ "$pid" =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF -- "$STATE/" || return 1
    [[ "$(basename "$(tr '\0' '\n' </proc/"$pid"/cmdline | head -1)")" == "$name" ]] || return 1
    echo "$pid"
}

running() { local d; for d in "${DAEMONS[@]}"; do our_pid "$d" >/dev/null || return 1; done; }

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    { command -v slurmctld && command -v slurmd && command -v sbatch; } >/dev/null || missing+=(slurm-wlm)
    [[ ${#missing[@]} -eq 0 ]] && return
    [[ $EUID -eq 0 ]] || die "${missing[*]} not installed; run as root (sudo $0 start) to install them with apt"
    command -v apt-get >/dev/null || die "${missing[*]} not installed and no apt-get here: install them with your package manager"
    echo "local-slurm: installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$STATE/apt.log" 2>&1 ||
        { apt-get update -q >>"$STATE/apt.log" 2>&1 &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$STATE/apt.log" 2>&1; } ||
        die "apt-get install ${missing[*]} failed; see $STATE/apt.log"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

write_config() {
    local host ctld_port slurmd_port
    host=$(hostname -s)
    ctld_port=$(free_port)
    slurmd_port=$(free_port)
    [[ "$ctld_port" != "$slurmd_port" ]] || slurmd_port=$(free_port)
    mkdir -p "$STATE/munge" "$STATE/ctld" "$STATE/spool" "$STATE/log" "$STATE/pids"
    chmod 0755 "$STATE" "$STATE/munge"  # munged refuses a socket folder others may write to
    if [[ ! -s "$STATE/munge/munge.key" ]]; then
        mungekey --create --keyfile="$STATE/munge/munge.key" 2>/dev/null ||
            dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
        chmod 0400 "$STATE/munge/munge.key"
    fi
    # Snakemake's job step executor runs `srun` with every SLURM_* variable but the job's own removed
    # (snakemake-executor-plugin-slurm-jobstep 0.6), SLURM_CONF included; this srun, first on PATH (env.sh),
    # restores it.
    local srun
    srun=$(PATH=$(tr ':' '\n' <<<"$PATH" | grep -vxF "$STATE/bin" | paste -sd:) command -v srun)
    mkdir -p "$STATE/bin"
    printf '#!/bin/sh\nSLURM_CONF=%s/slurm.conf exec %s "$@"\n' "$STATE" "$srun" >"$STATE/bin/srun"
    chmod 0755 "$STATE/bin/srun"
    printf 'export SLURM_CONF=%s/slurm.conf\nexport PATH=%s/bin:$PATH\n' "$STATE" "$STATE" >"$STATE/env.sh"
    cat >"$STATE/slurm.conf" <<EOF
# Written by workflow/cluster/local-slurm.sh: a one-node test cluster (rewritten at each start).
ClusterName=llm-anatomy-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
DefMemPerCPU=1000
# finished jobs stay visible to squeue (Snakemake's status command here) for an hour
MinJobAge=3600
MailProg=/bin/true
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/log/slurmctld.pid
SlurmdPidFile=$STATE/log/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
EOF
}

# A daemon in the foreground, in its own session (a Ctrl-C or a kill of the caller's process group
# does not reach it); its pid is recorded as started.
launch() {
    local name=$1 pid i; shift
    setsid "$@" </dev/null >>"$STATE/log/$name.out" 2>&1 &
    pid=$!
    echo "$pid" >"$STATE/pids/$name"
    for ((i = 0; i < 100; i++)); do  # until the background shell has become the daemon (exec)
        our_pid "$name" >/dev/null && return
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    die "$name did not start; see $STATE/log/$name.out"
}

node_idle() { [[ "$(SLURM_CONF="$STATE/slurm.conf" sinfo -h -N -o %t 2>/dev/null | sort -u)" == "idle" ]]; }

wait_idle() {
    local deadline=$((SECONDS + WAIT_S)) d
    until node_idle; do
        for d in "${DAEMONS[@]}"; do
            our_pid "$d" >/dev/null || die "$d exited during start; see $STATE/log/"
        done
        ((SECONDS < deadline)) || die "the node is not idle after ${WAIT_S}s: $(SLURM_CONF="$STATE/slurm.conf" sinfo -N 2>&1); see $STATE/log/"
        sleep 1
    done
}

start() {
    [[ $EUID -eq 0 ]] || die "run as root (sudo $0 start): slurmd starts jobs as their users"
    mkdir -p "$STATE"
    STATE="$(cd "$STATE" && pwd)"
    if running; then
        wait_idle
        echo "local-slurm: already running; clients: source $STATE/env.sh"
        return
    fi
    stop_daemons  # a partial start (one daemon died): stop the rest before starting afresh
    install_packages
    write_config
    rm -f "$STATE/munge/munge.socket"  # a stale socket of a killed munged would pass for a ready one
    launch munged munged --foreground --force --socket="$STATE/munge/munge.socket" \
        --key-file="$STATE/munge/munge.key" --pid-file="$STATE/munge/munged.pid" \
        --seed-file="$STATE/munge/munged.seed" --log-file="$STATE/log/munged.log"
    local deadline=$((SECONDS + 30))
    until [[ -S "$STATE/munge/munge.socket" ]]; do
        our_pid munged >/dev/null || die "munged exited; see $STATE/log/munged.log"
        ((SECONDS < deadline)) || die "munged opened no socket in 30s; see $STATE/log/munged.log"
        sleep 0.2
    done
    # -c: no jobs carried over from an earlier run of this test cluster
    launch slurmctld slurmctld -D -c -i -f "$STATE/slurm.conf"
    launch slurmd slurmd -D -f "$STATE/slurm.conf" -N "$(hostname -s)"
    wait_idle
    echo "local-slurm: node idle; clients: source $STATE/env.sh"
}

# TERM, then KILL after 10 s, for each daemon this script started; nothing else.
stop_daemons() {
    local d pid i
    for d in slurmd slurmctld munged; do
        if pid=$(our_pid "$d"); then
            kill -TERM "$pid" 2>/dev/null || true
            for ((i = 0; i < 100; i++)); do
                [[ -d /proc/$pid ]] || break
                sleep 0.1
            done
            [[ -d /proc/$pid ]] && kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$STATE/pids/$d"
    done
}

stop() {
    [[ -d "$STATE" ]] || { echo "local-slurm: nothing to stop (no $STATE)"; return; }
    STATE="$(cd "$STATE" && pwd)"
    if running; then
        # the cluster's own jobs (and their slurmstepd), before the daemons that run them
        local jobs deadline=$((SECONDS + 30))
        jobs=$(SLURM_CONF="$STATE/slurm.conf" squeue -h -o %A 2>/dev/null || true)
        # shellcheck disable=SC2086
        [[ -z "$jobs" ]] || SLURM_CONF="$STATE/slurm.conf" scancel $jobs 2>/dev/null || true
        while [[ -n "$(SLURM_CONF="$STATE/slurm.conf" squeue -h -t RUNNING,COMPLETING,PENDING 2>/dev/null)" ]] &&
            ((SECONDS < deadline)); do
            sleep 0.5
        done
    fi
    stop_daemons
    echo "local-slurm: stopped"
}

# Exit status 0 when all three daemons run, 3 otherwise.
status() {
    local d pid
    [[ -d "$STATE" ]] || { echo "local-slurm: not running (no $STATE)"; return 3; }
    STATE="$(cd "$STATE" && pwd)"
    for d in "${DAEMONS[@]}"; do
        if pid=$(our_pid "$d"); then echo "$d: running (pid $pid)"; else echo "$d: not running"; fi
    done
    running || return 3
    SLURM_CONF="$STATE/slurm.conf" sinfo
    echo "clients: source $STATE/env.sh"
}

[[ $# -eq 1 ]] || usage
case "$1" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
