#!/usr/bin/env bash
# A throw-away one-node Slurm cluster on this machine, for testing the SLURM profile (tests/test_slurm.py).
#
#   scripts/slurm_local_cluster.sh start    # install slurm-wlm + munge (Debian/Ubuntu, as root), start daemons
#   scripts/slurm_local_cluster.sh status   # exit 0 if our cluster answers, print sinfo
#   scripts/slurm_local_cluster.sh stop     # stop only the daemons this script started (by PID)
#
# The node advertises this machine's CPUs, 90% of its memory and fake GPUs (gres gpu, File=/dev/null or
# empty files), so that jobs submitted with --gpus=N are scheduled on a machine without a GPU. No slurmdbd:
# sacct does not work, so run Snakemake with `--slurm-status-command squeue` (MinJobAge=3600 keeps finished jobs
# visible to squeue and `scontrol show job` for an hour).
#
# The config must live at /etc/slurm/slurm.conf: the executor plugin's jobstep drops SLURM_CONF inside
# jobs. The script writes it only if absent or written by itself (marker line), never over a real one.
# Daemon state, logs and PID files: $S2S_SLURM_DIR (default /tmp/s2s-slurm).
set -euo pipefail

STATE=${S2S_SLURM_DIR:-/tmp/s2s-slurm}
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARKER="# written by s2s scripts/slurm_local_cluster.sh"
NODE=$(hostname -s)
# The fake GPUs: one per File entry. tests/test_slurm.py starts it with 2 (its LoRA trains in 2 processes).
FAKE_GPUS=${S2S_SLURM_FAKE_GPUS:-1}

log() { echo "slurm_local_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

pid_alive() { [[ -s "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

ours() { [[ -f "$CONF" ]] && grep -qF "$MARKER" "$CONF"; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    [[ $(id -u) -eq 0 ]] || die "installing slurm-wlm and munge needs root"
    command -v apt-get >/dev/null || die "no apt-get: install slurm-wlm and munge by hand"
    log "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends slurm-wlm munge >"$STATE/apt.log" 2>&1; then
        apt-get update -qq >>"$STATE/apt.log" 2>&1
        apt-get install -y -qq --no-install-recommends slurm-wlm munge >>"$STATE/apt.log" 2>&1 \
            || die "apt-get install failed, see $STATE/apt.log"
    fi
}

write_config() {
    if [[ -f "$CONF" ]] && ! ours; then
        die "$CONF exists and was not written by this script; not touching a real cluster's config"
    fi
    local cpus mem_mb files=()
    cpus=$(nproc)
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d"
    if [[ $FAKE_GPUS -eq 1 ]]; then
        files=(/dev/null)
    else  # gres needs one distinct file per GPU; plain files do, nothing opens them
        for ((i = 0; i < FAKE_GPUS; i++)); do touch "$STATE/fakegpu$i"; files+=("$STATE/fakegpu$i"); done
    fi
    cat >"$CONF" <<EOF
$MARKER (stop removes it)
ClusterName=s2slocal
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in containers: track processes by parent PID, no CPU binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# No slurmdbd: keep finished jobs in slurmctld for an hour so that squeue / scontrol still show them
# (the plugin needs them in squeue; tests read their gres requests back with scontrol).
MinJobAge=3600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
KillWait=5
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:$FAKE_GPUS State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$GRES_CONF" <<EOF
$MARKER (stop removes it)
AutoDetect=off
NodeName=$NODE Name=gpu File=$(IFS=,; echo "${files[*]}")
EOF
}

start_munge() {
    if [[ -S /run/munge/munge.socket.2 ]] && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged answers already (ours from an earlier start, or the system's): use it
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid --log-file=/var/log/munge/munged.log
    for _ in $(seq 50); do pid_alive /run/munge/munged.pid && break; sleep 0.1; done
    pid_alive /run/munge/munged.pid || die "munged did not start (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$STATE/munged.pid"  # ours: stop kills it
}

start_slurm() {
    if ! pid_alive "$STATE/slurmctld.pid"; then
        slurmctld -c -i || die "slurmctld did not start (see $STATE/slurmctld.log)"
    fi
    if ! pid_alive "$STATE/slurmd.pid"; then
        slurmd -c || die "slurmd did not start (see $STATE/slurmd.log)"
    fi
    local state=""
    for _ in $(seq 60); do
        state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null || true)
        [[ $state == idle* || $state == mix* || $state == alloc* ]] && break
        if [[ $state == down* || $state == drain* ]]; then
            scontrol update nodename="$NODE" state=resume 2>/dev/null || true
        fi
        sleep 0.5
    done
    [[ $state == idle* || $state == mix* || $state == alloc* ]] \
        || die "node $NODE is '${state:-unknown}' (see $STATE/slurmctld.log, $STATE/slurmd.log)"
    for daemon in slurmctld slurmd; do echo started >"$STATE/$daemon.ours"; done
}

cmd_start() {
    mkdir -p "$STATE"
    if ours && pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" && scontrol ping >/dev/null 2>&1; then
        log "already running"
        sinfo
        return
    fi
    install_packages
    write_config
    start_munge
    start_slurm
    log "running: node $NODE, $(nproc) CPUs, $FAKE_GPUS fake GPU(s); state in $STATE"
    sinfo
}

stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM the daemon whose PID we recorded, wait, then SIGKILL
    local name=$1 pidfile=$2 pid
    [[ -s $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name ($pid) ignored SIGTERM, sending SIGKILL"
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

cmd_stop() {
    # Cancel what still runs on our cluster first, so that no job step outlives slurmd.
    if ours && pid_alive "$STATE/slurmctld.pid" && scontrol ping >/dev/null 2>&1; then
        local jobs
        jobs=$(squeue -h -t PD,R,CG -o %i 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            log "cancelling jobs: ${jobs//$'\n'/ }"
            # shellcheck disable=SC2086
            scancel $jobs || true
            for _ in $(seq 30); do [[ -z $(squeue -h -t PD,R,CG -o %i 2>/dev/null) ]] && break; sleep 0.5; done
        fi
    fi
    if [[ -f "$STATE/slurmd.ours" ]]; then stop_pid slurmd "$STATE/slurmd.pid"; fi
    if [[ -f "$STATE/slurmctld.ours" ]]; then stop_pid slurmctld "$STATE/slurmctld.pid"; fi
    stop_pid munged "$STATE/munged.pid"  # only exists when this script started munged
    rm -f "$STATE"/*.ours
    if ours; then rm -f "$CONF"; fi
    if [[ -f $GRES_CONF ]] && grep -qF "$MARKER" "$GRES_CONF"; then rm -f "$GRES_CONF"; fi
    log "stopped"
}

cmd_status() {
    if ! { ours && pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" && scontrol ping >/dev/null 2>&1; }; then
        log "not running"
        return 1
    fi
    sinfo
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
