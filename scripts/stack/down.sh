#!/usr/bin/env bash
# Stop the loopback test cluster started by up.sh; idempotent.
#
#   sudo bash scripts/stack/down.sh
#
# Stops sshd (and its open connections), the jobs still running (their processes and
# slurmstepd), slurmd, slurmctld, slurmdbd, mariadbd and munged, in this order, by the PIDs
# recorded under $OBP_STACK_DIR/run: SIGTERM, a bounded wait, then SIGKILL. The state (Slurm job state,
# accounting database, keys) is kept; `rm -rf $OBP_STACK_DIR` after down.sh starts from scratch.
#
# If the PID files are gone (e.g. the state folder was removed while the stack ran), daemons
# still listening on the stack's ports are found by port and stopped as well.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# PIDs of the slurmstepd processes of this stack: each listens on a unix socket
# <SlurmdSpoolDir>/localhost_<job>.<step>. They are not children of slurmd (it double-forks
# them) and they outlive slurmd, so they are found by their sockets.
stepd_pids() {
  ss -Hxlp 2>/dev/null | awk -v d="${SLURMD_SPOOL_DIR}/" 'index($5, d) == 1' |
    grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u
}

# End the jobs still running: their processes first (SIGTERM, then SIGKILL), while slurmctld
# still runs, so that slurmstepd reports the end of the job (sacct then shows e.g. FAILED or
# CANCELLED instead of a job that runs forever), then the slurmstepd processes themselves.
stop_job_steps() {
  local stepds=() s procs=() p
  mapfile -t stepds < <(stepd_pids)
  for s in "${stepds[@]}"; do
    pid_runs "${s}" /usr/sbin/slurmstepd || continue
    log "ending the processes of a running job step (slurmstepd pid ${s})"
    mapfile -t procs < <(descendant_pids "${s}")
    for p in "${procs[@]}"; do
      [[ -n "${p}" ]] && stop_pid "job process" "${p}" 5
    done
  done
  for s in "${stepds[@]}"; do
    pid_runs "${s}" /usr/sbin/slurmstepd || continue
    # Left alone, slurmstepd exits once it has reported the end of the step.
    local deadline=$((SECONDS + 10))
    while pid_alive "${s}" && ((SECONDS < deadline)); do sleep 0.1; done
    stop_pid slurmstepd "${s}" 5
  done
}

# Stop daemons that still listen on one of the stack's TCP ports although no PID file names
# them (only processes running the expected daemon binary are touched).
stop_orphans_by_port() {
  local i name port pid
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    name="${DAEMONS[i]}"
    [[ -n "${DAEMON_PORT[${name}]:-}" ]] || continue
    port="${DAEMON_PORT[${name}]}"
    while read -r pid; do
      [[ -n "${pid}" ]] || continue
      if pid_runs "${pid}" "${DAEMON_BIN[${name}]}"; then
        warn "${name} (pid ${pid}) listens on 127.0.0.1:${port} without a PID file: stopping it"
        stop_pid "${name}" "${pid}" "${STOP_WAIT[${name}]}"
      fi
    done < <(ss -Hltnp "sport = :${port}" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u)
  done
  # munged has no port, and a munged without our PID file may be the system's: only report it.
  pid="$(head -n 1 /run/munge/munged.pid 2>/dev/null || true)"
  if ! daemon_running munged && pid_runs "${pid}" /usr/sbin/munged; then
    warn "a munged (pid ${pid}) runs without the stack's PID file; left running"
  fi
}

main() {
  require_root
  local name
  if [[ -d "${STACK_RUN}" ]]; then
    stop_sshd_daemon close-sessions
    stop_job_steps
    stop_daemon slurmd
    for name in slurmctld slurmdbd mariadbd munged; do
      stop_daemon "${name}"
    done
  fi
  stop_orphans_by_port
  # Left by mariadbd; harmless, but keep /run clean.
  rm -rf "${MYSQL_RUNDIR}"
  # The sbatch test fixture, only when it is ours.
  if grep -q "TEST FIXTURE of the obp-workflow test stack" /usr/local/bin/sbatch 2>/dev/null; then
    rm -f /usr/local/bin/sbatch
  fi
  # The lfs HSM emulator and its configuration, likewise (its folders stay with the state).
  if grep -q "TEST FIXTURE of the obp-workflow test stack" /usr/local/bin/lfs 2>/dev/null; then
    rm -f /usr/local/bin/lfs
  fi
  if grep -q "TEST FIXTURE of the obp-workflow test stack" "${LFS_HSM_CONF}" 2>/dev/null; then
    rm -f "${LFS_HSM_CONF}"
    rmdir "$(dirname "${LFS_HSM_CONF}")" 2>/dev/null || true
  fi
  log "stack down in $(elapsed) s"
}

main "$@"
