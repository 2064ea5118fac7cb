# shellcheck shell=bash
# shellcheck disable=SC2034  # the settings are used by the scripts that source this file
# Common settings and helpers of the loopback test cluster (sourced by up.sh, down.sh,
# status.sh and sshd.sh; not meant to be run by itself).
#
# The stack: munged, mariadbd (127.0.0.1), slurmdbd, slurmctld, slurmd (one node "localhost")
# and an OpenSSH server on 127.0.0.1:2222 for the users obpsim and obpadmin.
#
# Every daemon is started in the foreground of its own session (setsid), with stdin from
# /dev/null and its output in a log file, so that the caller of up.sh (pytest, make, CI)
# never waits on a pipe a daemon keeps open. The PID of each daemon is the PID the script
# started, written to $STACK_RUN/<name>.pid; down.sh stops the daemons by these PIDs.
#
# State (configs, keys, logs, PID files, Slurm spools, the MariaDB data folder) lives under
# $OBP_STACK_DIR (default: /var/tmp/obp-workflow-stack). Slurm reads /etc/slurm/slurm.conf and
# /etc/slurm/slurmdbd.conf (the default paths, so ssh sessions need no SLURM_CONF).

# The folder of these scripts and the repository root.
STACK_SCRIPTS="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${STACK_SCRIPTS}/../.." && pwd)"

# ---------------------------------------------------------------------------------------------
# Settings (the environment may override the first block)
# ---------------------------------------------------------------------------------------------
# Outside the checkout by default: daemons running as other users (mysql, the cluster users)
# must reach it, whatever the permissions of the folders above the checkout.
STACK_DIR="${OBP_STACK_DIR:-/var/tmp/obp-workflow-stack}"
SSH_PORT="${OBP_STACK_SSH_PORT:-2222}"
DB_PORT="${OBP_STACK_DB_PORT:-3307}"
CLUSTER_NAME="${OBP_STACK_CLUSTER:-obptest}"
PARTITION_NAME="${OBP_STACK_PARTITION:-debug}"

SSH_HOST="127.0.0.1"
SIM_USER="obpsim"
ADMIN_USER="obpadmin"
ADMIN_GROUP="obpadmin"
STACK_USERS=("${SIM_USER}" "${ADMIN_USER}")

# Folders of the state.
STACK_ETC="${STACK_DIR}/etc"          # generated configs that are not in /etc/slurm
STACK_SSH="${STACK_DIR}/ssh"          # host key, user keys, known_hosts
STACK_RUN="${STACK_DIR}/run"          # PID files
STACK_LOG="${STACK_DIR}/log"          # daemon logs
STACK_SPOOL="${STACK_DIR}/spool"      # StateSaveLocation and SlurmdSpoolDir
STACK_DB="${STACK_DIR}/mariadb"       # private MariaDB data folder

SLURM_ETC="/etc/slurm"
SLURM_CONF_FILE="${SLURM_ETC}/slurm.conf"
SLURMDBD_CONF_FILE="${SLURM_ETC}/slurmdbd.conf"
STATE_SAVE_DIR="${STACK_SPOOL}/slurmctld"
SLURMD_SPOOL_DIR="${STACK_SPOOL}/slurmd"
JOBCOMP_LOG="${STACK_LOG}/jobcomp.log"
# The lfs HSM emulator (fixtures/lfs): the folder standing for the Lustre mount, its HSM state
# and its configuration (read by the emulator at this fixed path; tests add the S3 endpoint).
LUSTRE_MOUNT="${STACK_DIR}/lustre"
LUSTRE_HSM_STATE="${STACK_DIR}/lustre-hsm"
LFS_HSM_CONF="/etc/obp-stack/lfs-hsm.conf"

# Runtime folder of mariadbd (socket and its own pid file); short path, as unix socket paths
# are limited to 107 bytes and the state folder may be deep.
MYSQL_RUNDIR="/run/obp-stack-mysqld"
MYSQL_SOCKET="${MYSQL_RUNDIR}/mysqld.sock"
DB_NAME="slurm_acct_db"
DB_USER="slurm"
DB_PASS_FILE="${STACK_ETC}/db.pass"

SSHD_CONFIG="${STACK_ETC}/sshd_config"
HOST_KEY="${STACK_SSH}/ssh_host_ed25519_key"
KNOWN_HOSTS="${STACK_SSH}/known_hosts"

STACK_ENV="${STACK_DIR}/stack.env"
STACK_JSON="${STACK_DIR}/stack.json"

# Daemons in start order. down.sh stops them in the reverse order.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd sshd)

# The binary of each daemon: a PID counts as ours only when /proc/PID/exe is this file
# (protects against a stale PID file whose PID was reused by another process).
declare -A DAEMON_BIN=(
  [munged]=/usr/sbin/munged
  [mariadbd]=/usr/sbin/mariadbd
  [slurmdbd]=/usr/sbin/slurmdbd
  [slurmctld]=/usr/sbin/slurmctld
  [slurmd]=/usr/sbin/slurmd
  [sshd]=/usr/sbin/sshd
)

# Seconds a daemon gets to exit after SIGTERM before it is killed. slurmctld saves its job
# state on SIGTERM (10,000+ held jobs take a moment); mariadbd flushes InnoDB.
declare -A STOP_WAIT=(
  [munged]=10 [mariadbd]=30 [slurmdbd]=15 [slurmctld]=30 [slurmd]=15 [sshd]=5
)

# TCP ports the daemons listen on (used by down.sh to find daemons whose PID files are gone).
declare -A DAEMON_PORT=(
  [mariadbd]="${DB_PORT}" [slurmdbd]=6819 [slurmctld]=6817 [slurmd]=6818 [sshd]="${SSH_PORT}"
)

# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------
STACK_T0="${EPOCHREALTIME}"

# Seconds since the script started, e.g. "1.234".
elapsed() {
  local now="${EPOCHREALTIME}"
  awk -v a="${STACK_T0}" -v b="${now}" 'BEGIN { printf "%.3f", b - a }'
}

log() { printf '[stack %6ss] %s\n' "$(elapsed)" "$*"; }
warn() { printf '[stack %6ss] WARNING: %s\n' "$(elapsed)" "$*" >&2; }
die() {
  printf '[stack %6ss] ERROR: %s\n' "$(elapsed)" "$*" >&2
  exit 1
}

require_root() {
  if [[ "${EUID}" -ne 0 ]]; then
    echo "$(basename "$0"): the test stack must be managed as root (it starts munged, MariaDB," \
      "Slurm and sshd, and creates users); run: sudo bash $0" >&2
    exit 1
  fi
}

# Print the last lines of a log file to stderr (used when a daemon fails to start).
show_log_tail() {
  local file="$1"
  if [[ -f "${file}" ]]; then
    echo "---- last lines of ${file} ----" >&2
    tail -n 25 "${file}" >&2 || true
    echo "----" >&2
  fi
}

# ---------------------------------------------------------------------------------------------
# PID files and processes
# ---------------------------------------------------------------------------------------------
pid_file() { echo "${STACK_RUN}/$1.pid"; }

# True when process $1 runs binary $2. Debian installs some daemons behind alternatives
# symlinks (/usr/sbin/slurmctld -> slurmctld-wlm), and an upgraded binary shows as
# "<path> (deleted)". Without root, /proc/PID/exe of root's daemons is unreadable: then the
# process name is compared instead (good enough for status.sh).
pid_runs() {
  local pid="$1" bin exe comm
  [[ "${pid}" =~ ^[0-9]+$ && -e "/proc/${pid}" ]] || return 1
  bin="$(readlink -f "$2")"
  exe="$(readlink "/proc/${pid}/exe" 2>/dev/null || true)"
  if [[ -z "${exe}" && "${EUID}" -ne 0 ]]; then
    comm="$(cat "/proc/${pid}/comm" 2>/dev/null || true)"
    [[ -n "${comm}" && "${comm}" == "$(basename "$2" | cut -c1-15)" ]]
    return
  fi
  exe="${exe% (deleted)}"
  [[ -n "${exe}" && "${exe}" == "${bin}" ]]
}

# Print the PID recorded for daemon $1 if that process is alive and runs the daemon's binary;
# return 1 otherwise.
daemon_pid() {
  local name="$1" file pid
  file="$(pid_file "${name}")"
  [[ -r "${file}" ]] || return 1
  pid="$(head -n 1 "${file}" 2>/dev/null || true)"
  pid_runs "${pid}" "${DAEMON_BIN[${name}]}" || return 1
  echo "${pid}"
}

daemon_running() { daemon_pid "$1" >/dev/null; }

# True while process $1 exists (zombies count as gone).
pid_alive() {
  local state
  [[ -e "/proc/$1" ]] || return 1
  state="$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null || true)"
  [[ -n "${state}" && "${state}" != "Z" ]]
}

# Start daemon $1 with command "${@:2}" in a new session, detached from our stdio, with a
# minimal environment (not the caller's, e.g. pytest's), and record its PID. setsid and env
# exec in place (setsid does not fork: a background job of a non-interactive shell is not a
# process group leader), so $! is the daemon itself (checked below).
start_daemon() {
  local name="$1"
  shift
  local out="${STACK_LOG}/${name}.out" pid
  set +m
  setsid env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@" \
    </dev/null >>"${out}" 2>&1 &
  pid=$!
  echo "${pid}" >"$(pid_file "${name}")"
  # Give exec a moment, then make sure the PID runs the daemon and not setsid.
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    if daemon_running "${name}"; then
      return 0
    fi
    pid_alive "${pid}" || break
    sleep 0.02
  done
  daemon_running "${name}" || {
    show_log_tail "${out}"
    die "${name} did not start (see ${out})"
  }
}

# Wait until "$@" succeeds, checking every 0.1 s for at most $1 seconds; the remaining
# arguments are the check. Returns 1 on timeout.
wait_for() {
  local timeout="$1"
  shift
  local deadline=$((SECONDS + timeout))
  while true; do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# Send SIGTERM to PID $2 (a process of daemon $1, for messages), wait up to $3 seconds,
# then SIGKILL and wait until it is gone.
stop_pid() {
  local name="$1" pid="$2" timeout="$3"
  pid_alive "${pid}" || return 0
  kill -TERM "${pid}" 2>/dev/null || true
  local deadline=$((SECONDS + timeout))
  while pid_alive "${pid}" && ((SECONDS < deadline)); do
    sleep 0.1
  done
  if pid_alive "${pid}"; then
    warn "${name} (pid ${pid}) still alive after ${timeout}s: SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
    while pid_alive "${pid}"; do sleep 0.05; done
  fi
}

# Children (direct) of PID $1.
child_pids() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

# PIDs of the descendants of process $1, deepest first.
descendant_pids() {
  local child
  for child in $(child_pids "$1"); do
    descendant_pids "${child}"
    echo "${child}"
  done
}

# Stop daemon $1 by its PID file: SIGTERM, bounded wait, SIGKILL. Idempotent.
stop_daemon() {
  local name="$1" pid
  if pid="$(daemon_pid "${name}")"; then
    log "stopping ${name} (pid ${pid})"
    stop_pid "${name}" "${pid}" "${STOP_WAIT[${name}]}"
  fi
  rm -f "$(pid_file "${name}")"
}

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

# JSON string literal of $1 (escapes backslash, double quote and control characters that can
# occur in paths; enough for the values written here).
json_str() {
  local s="$1"
  s="${s//\\/\\\\}"
  s="${s//\"/\\\"}"
  s="${s//$'\n'/\\n}"
  s="${s//$'\t'/\\t}"
  printf '"%s"' "${s}"
}

# Write stdin to file $1 (mode $2) only when the content differs; return 0 when the file was
# (re)written, 1 when it was already up to date.
write_if_changed() {
  local file="$1" mode="$2" tmp
  tmp="$(mktemp "${file}.XXXXXX")"
  cat >"${tmp}"
  chmod "${mode}" "${tmp}"
  if [[ -f "${file}" ]] && cmp -s "${tmp}" "${file}"; then
    rm -f "${tmp}"
    chmod "${mode}" "${file}"
    return 1
  fi
  mv -f "${tmp}" "${file}"
  return 0
}

# Home folder of user $1.
user_home() { getent passwd "$1" | cut -d: -f6; }

# Private key of user $1.
user_key() { echo "${STACK_SSH}/$1_ed25519"; }

# Run ssh as user $1 against the stack's sshd with the pinned host key; the rest is the command.
stack_ssh() {
  local user="$1"
  shift
  ssh -i "$(user_key "${user}")" -p "${SSH_PORT}" \
    -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile="${KNOWN_HOSTS}" -o GlobalKnownHostsFile=/dev/null \
    -o ConnectTimeout=5 -o LogLevel=ERROR \
    "${user}@${SSH_HOST}" "$@"
}

# ---------------------------------------------------------------------------------------------
# sshd (shared by up.sh, down.sh and sshd.sh)
# ---------------------------------------------------------------------------------------------

# Start sshd from the generated config (the host key under the state folder is reused).
start_sshd_daemon() {
  [[ -f "${SSHD_CONFIG}" && -f "${HOST_KEY}" ]] ||
    die "no sshd configuration under ${STACK_DIR}: run up.sh first"
  install -d -m 755 /run/sshd
  /usr/sbin/sshd -t -f "${SSHD_CONFIG}" || die "sshd -t rejects ${SSHD_CONFIG}"
  start_daemon sshd /usr/sbin/sshd -D -f "${SSHD_CONFIG}" -E "${STACK_LOG}/sshd.log"
}

# Stop the sshd listener. $1: "close-sessions" also ends the open connections and the
# commands running in them (the per-connection sshd processes are the listener's children),
# like a host going away; "keep-sessions" lets them live on.
stop_sshd_daemon() {
  local mode="${1:-}" pid procs=() p
  if ! pid="$(daemon_pid sshd)"; then
    rm -f "$(pid_file sshd)"
    return 0
  fi
  if [[ "${mode}" != keep-sessions ]]; then
    # Collected before the listener goes: afterwards the connections are orphans of PID 1.
    mapfile -t procs < <(descendant_pids "${pid}")
  fi
  stop_daemon sshd
  for p in "${procs[@]}"; do
    [[ -n "${p}" ]] && stop_pid "ssh session process" "${p}" 5
  done
  return 0
}
