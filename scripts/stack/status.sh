#!/usr/bin/env bash
# Print which daemons of the test stack run; exit 0 when all do, 1 otherwise.
#
#   bash scripts/stack/status.sh     (any user; as root it also tries an ssh login)
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  local name pid all=0
  echo "state folder: ${STACK_DIR}"
  for name in "${DAEMONS[@]}"; do
    if pid="$(daemon_pid "${name}" 2>/dev/null)"; then
      printf '  %-10s running  pid %s\n' "${name}" "${pid}"
    else
      printf '  %-10s stopped\n' "${name}"
      all=1
    fi
  done
  if ((all == 0)); then
    echo "slurm: node $(sinfo -h -n localhost -o '%T' 2>/dev/null || echo '?')," \
      "$(squeue -h -o %i 2>/dev/null | wc -l) job(s) in squeue," \
      "cluster $(sacctmgr -n -P list cluster format=cluster 2>/dev/null | tr '\n' ' ')"
    if [[ "${EUID}" -eq 0 ]]; then
      if stack_ssh "${SIM_USER}" true </dev/null 2>/dev/null; then
        echo "ssh: ${SIM_USER}@${SSH_HOST}:${SSH_PORT} login ok"
      else
        echo "ssh: ${SIM_USER}@${SSH_HOST}:${SSH_PORT} login FAILS"
        all=1
      fi
    fi
  fi
  return "${all}"
}

main "$@"
