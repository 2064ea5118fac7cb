"""Starting a job of the process scheduler: its number, and its wrapper, detached.

The wrapper is started as ``python -m obp_workflow.adapters.local.job_wrapper`` in a session
of its own, stdin from /dev/null, with the job's lock handed over on an inherited descriptor
(the gateway took it before writing the record, so the job is never without a holder until its
wrapper is gone). That first process forks the wrapper proper and exits; it is reaped here, so
the service is never the parent of a job's processes and keeps no zombie.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading

from obp_workflow.core.errors import ClusterUnreachable, SubmissionUnclear

from .job_wrapper import JOB_ENVIRONMENT
from .scheduler_state import JobRecord, SchedulerDir, locked, write_atomically

WRAPPER_MODULE = "obp_workflow.adapters.local.job_wrapper"


def next_job_id(state: SchedulerDir) -> str:
    """The next job number, under the counter's lock (shared by every gateway process)."""
    counter = state.root / "next-id"
    with locked(state.root / "next-id.lock"):
        try:
            number = int(counter.read_text())
        except (FileNotFoundError, ValueError):  # first job, or a lost counter
            known = [int(p.stem) for p in state.accounting.glob("*.json") if p.stem.isdigit()]
            number = max(known, default=0) + 1
        write_atomically(counter, str(number + 1))
    return str(number)


def start_wrapper(
    python: str,
    state: SchedulerDir,
    record: JobRecord,
    lock: int,
    *,
    confirm_seconds: float,
    cluster_name: str,
) -> None:
    """Start the job's wrapper with the job's lock. ClusterUnreachable when it could not start
    (the job is withdrawn); SubmissionUnclear when it did not confirm in time (the job may run:
    it is found by its tag)."""
    argv = [python, "-m", WRAPPER_MODULE, str(state.root.parent), record.job_id, str(lock)]
    names = (*JOB_ENVIRONMENT, "PYTHONPATH")
    env = {name: os.environ[name] for name in names if name in os.environ}
    log_path = state.wrapper_log(record.job_id)
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        try:
            first = subprocess.Popen(  # noqa: S603  (this interpreter and our module, no shell)
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                pass_fds=(lock,),
                start_new_session=True,
                cwd=state.root,
                env=env,
            )
        finally:
            os.close(log)
    except OSError as exc:
        withdraw(state, record)
        raise ClusterUnreachable(f"cannot start the wrapper of a job: {exc}") from None
    try:
        code = first.wait(timeout=confirm_seconds)
    except subprocess.TimeoutExpired:
        threading.Thread(target=first.wait, name="reap-job-wrapper", daemon=True).start()
        raise SubmissionUnclear(
            f"the wrapper of job {record.job_id} on {cluster_name} did not confirm its start "
            f"within {confirm_seconds:g} s"
        ) from None
    if code != 0:
        withdraw(state, record)
        raise ClusterUnreachable(
            f"the wrapper of a job on {cluster_name} could not start (exit status {code}): "
            + (state.last_words(record.job_id) or "no error recorded")
        )


def withdraw(state: SchedulerDir, record: JobRecord) -> None:
    """Forget a job that never started (its lock held by the caller, no wrapper alive)."""
    for path in (
        state.tags / record.tag / record.job_id,
        state.record(record.job_id),
        state.accounted(record.job_id),
    ):
        with contextlib.suppress(OSError):
            path.unlink()
