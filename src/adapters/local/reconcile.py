"""A live job whose wrapper is gone: the wrapper was killed (SIGKILL, the OOM killer) or the
machine restarted before it recorded the job's end. Its lock is then free while its record
still says PENDING or RUNNING; the gateway that sees it records the end (FAILED, or CANCELLED
when a cancel was asked for) and stops the job's left-over processes, if any are still there.
"""

from __future__ import annotations

import os
import time

from .scheduler_state import (
    JobRecord,
    SchedulerDir,
    boot_id,
    group_alive,
    process_start,
    stop_group,
    try_lock,
)

#: The longest wait for the processes of a job whose wrapper is gone to stop after SIGTERM.
ORPHAN_GRACE_SECONDS = 2.0


def settle(state: SchedulerDir, record: JobRecord) -> JobRecord:
    """The job's record, with its end recorded when its wrapper is gone without doing so."""
    if not record.live:
        return record
    lock = try_lock(state.lock(record.job_id), create=False)
    if lock is None:
        return record  # held: the wrapper is alive and answers for the job
    try:
        loaded = state.load(record.job_id)  # it may have recorded an end just before exiting
        current = loaded[0] if loaded else record
        if not current.live:
            return current
        stopped = stop_orphan(current)
        cancelled = state.request(current.job_id, "cancel").exists()
        current.state = "CANCELLED" if cancelled else "FAILED"
        current.reason = "None" if cancelled else "WrapperGone"
        current.exit_code = current.signal = None
        current.ended = time.time()
        pid = f" (pid {current.wrapper_pid})" if current.wrapper_pid else ""
        current.detail = (
            f"the job's wrapper{pid} ended without recording the job's end: it was killed, "
            "or the machine restarted"
        )
        if stopped:
            current.detail += "; the job's processes were stopped"
        last = state.last_words(current.job_id)
        if last:
            current.detail += f"; its last words: {last}"
        state.save(current)
        return current
    finally:
        os.close(lock)


def stop_orphan(record: JobRecord) -> bool:
    """Stop the processes of a job whose wrapper is gone; whether there were any to stop."""
    pgid = record.job_pgid
    if pgid is None or record.boot_id != boot_id():
        return False  # never started, or on an earlier boot: nothing of it is left
    start = process_start(pgid)
    if start is not None and start != record.job_start:
        return False  # the number is another process's now (a live group keeps its number)
    if not group_alive(pgid):
        return False
    stop_group(pgid, min(record.grace, ORPHAN_GRACE_SECONDS))
    return True
