#!/usr/bin/env bash
# Stop or start the stack's sshd alone (for fault tests); the rest of the stack keeps running.
#
#   sudo bash scripts/stack/sshd.sh stop            # listener and open connections
#   sudo bash scripts/stack/sshd.sh stop-listener   # listener only; open connections live on
#   sudo bash scripts/stack/sshd.sh start           # same config, same host key as before
#   sudo bash scripts/stack/sshd.sh restart
#   sudo bash scripts/stack/sshd.sh status          # exit 0 when running
#
# start waits until a key login with the pinned host key works (at most 10 s).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ssh_login_works() { stack_ssh "${SIM_USER}" true </dev/null; }

do_start() {
  if daemon_running sshd; then
    log "sshd already running (pid $(daemon_pid sshd))"
    return 0
  fi
  log "starting sshd on ${SSH_HOST}:${SSH_PORT}"
  start_sshd_daemon
  wait_for 10 ssh_login_works || {
    show_log_tail "${STACK_LOG}/sshd.log"
    die "key login over ssh does not work after 10 s"
  }
  log "sshd up (pid $(daemon_pid sshd))"
}

main() {
  require_root
  case "${1:-}" in
    start) do_start ;;
    stop)
      stop_sshd_daemon close-sessions
      log "sshd stopped"
      ;;
    stop-listener)
      stop_sshd_daemon keep-sessions
      log "sshd listener stopped"
      ;;
    restart)
      stop_sshd_daemon close-sessions
      do_start
      ;;
    status)
      if daemon_running sshd; then
        echo "sshd running (pid $(daemon_pid sshd))"
      else
        echo "sshd not running"
        exit 1
      fi
      ;;
    *)
      echo "usage: $0 start|stop|stop-listener|restart|status" >&2
      exit 2
      ;;
  esac
}

main "$@"
