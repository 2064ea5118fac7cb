#!/usr/bin/env bash
# Smoke test of a running stack, over ssh as the stack users (pinned host key, key login):
# a job that succeeds (COMPLETED 0:0), one that fails (FAILED 3:0), one cancelled while it runs
# (CANCELLED), a held job, SFTP; with --purge also that a finished job leaves squeue after
# MinJobAge while sacct keeps it (adds ~20 s).
#
#   sudo bash scripts/stack/smoke.sh [--purge]
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHECK_PURGE=0
[[ "${1:-}" == "--purge" ]] && CHECK_PURGE=1

# One sacct line "JobID|JobName|State|ExitCode" of job $2, as user $1.
acct() {
  stack_ssh "$1" sacct -X -n -P -j "$2" -o JobID,JobName,State,ExitCode </dev/null
}

# Wait up to 30 s until sacct shows job $2 of user $1 in state $3 with exit code $4.
expect_state() {
  local user="$1" job="$2" state="$3" code="$4" line="" deadline=$((SECONDS + 30))
  while ((SECONDS < deadline)); do
    line="$(acct "${user}" "${job}")"
    IFS='|' read -r _ _ got_state got_code <<<"${line}"
    # "CANCELLED by <uid>" counts as CANCELLED.
    if [[ "${got_state%% *}" == "${state}" && ("${code}" == "*" || "${got_code}" == "${code}") ]]; then
      log "  ${user}: job ${job} ${got_state} ${got_code}"
      return 0
    fi
    sleep 0.3
  done
  die "${user}: job ${job}: expected ${state} ${code}, sacct says '${line}'"
}

# squeue state of job $2 (all states), as user $1; empty once slurmctld purged the job.
queue_state() {
  stack_ssh "$1" "squeue -h -t all -j $2 -o %T 2>/dev/null || true" </dev/null
}

check_user() {
  local user="$1" ok fail long held
  log "${user}: PATH and tools"
  stack_ssh "${user}" 'command -v sbatch squeue sacct scancel scontrol >/dev/null' </dev/null ||
    die "${user}: Slurm commands are not on PATH over ssh"

  ok="$(stack_ssh "${user}" "sbatch --parsable --wrap 'echo hi from \$USER'" </dev/null)"
  fail="$(stack_ssh "${user}" "sbatch --parsable --wrap 'exit 3'" </dev/null)"
  long="$(stack_ssh "${user}" "sbatch --parsable --wrap 'sleep 600'" </dev/null)"
  held="$(stack_ssh "${user}" "sbatch --parsable --hold --wrap 'echo held'" </dev/null)"
  expect_state "${user}" "${ok}" COMPLETED 0:0
  expect_state "${user}" "${fail}" FAILED 3:0
  [[ "$(stack_ssh "${user}" cat "slurm-${ok}.out" </dev/null)" == "hi from ${user}" ]] ||
    die "${user}: unexpected output of job ${ok}"

  local deadline=$((SECONDS + 30))
  until [[ "$(queue_state "${user}" "${long}")" == RUNNING ]]; do
    ((SECONDS < deadline)) || die "${user}: job ${long} does not run"
    sleep 0.3
  done
  stack_ssh "${user}" scancel "${long}" </dev/null
  expect_state "${user}" "${long}" CANCELLED '*'

  [[ "$(stack_ssh "${user}" squeue -h -j "${held}" -o %r </dev/null)" == JobHeldUser ]] ||
    die "${user}: job ${held} is not held"
  stack_ssh "${user}" scancel "${held}" </dev/null
  expect_state "${user}" "${held}" CANCELLED '*'

  log "${user}: sftp"
  local out
  out="$(printf 'pwd\nls\n' | sftp -q -b - -P "${SSH_PORT}" -i "$(user_key "${user}")" \
    -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="${KNOWN_HOSTS}" \
    "${user}@${SSH_HOST}")" || die "${user}: sftp failed"
  grep -q "slurm-${ok}.out" <<<"${out}" || die "${user}: sftp ls misses slurm-${ok}.out"

  if ((CHECK_PURGE)); then
    log "${user}: waiting for job ${ok} to leave squeue (MinJobAge=10, purge every 10 s)"
    deadline=$((SECONDS + 40))
    while [[ -n "$(queue_state "${user}" "${ok}")" ]]; do
      ((SECONDS < deadline)) || die "${user}: job ${ok} still in squeue after 40 s"
      sleep 1
    done
    expect_state "${user}" "${ok}" COMPLETED 0:0
  fi
}

main() {
  require_root
  local user
  for user in "${STACK_USERS[@]}"; do
    check_user "${user}"
  done
  log "smoke test passed"
}

main "$@"
