"""Where a run is in its pipeline, read from the API's view of it (pure: no I/O, no rich).

The steps are the workflow container's: Provision (and the wait for the cluster), Submit,
AwaitJob, Sync, AwaitSync, Register. A step is done once the run is past the states it moves;
the current one is the run's state's; a run that ended FAILED or CANCELLED (or is being
cancelled) marks the step it had reached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

STEPS = ("Provision", "Submit", "AwaitJob", "Sync", "AwaitSync", "Register")

#: The step each state of the pipeline is in (SYNCING: Sync until a sync job runs).
_STEP_OF = {
    "ACCEPTED": 0,
    "PROVISIONING": 0,
    "SUBMITTING": 1,
    "QUEUED": 2,
    "RUNNING": 2,
    "SYNCING": 3,
    "REGISTERING": 5,
}
ENDED = ("DONE", "FAILED", "CANCELLED")


@dataclass(frozen=True)
class Step:
    name: str
    #: done, current, pending, or how the run ended there: failed, cancelled, cancelling
    status: str


def steps(run: Mapping[str, Any]) -> list[Step]:
    state = run["state"]
    if state == "DONE":
        return [Step(name, "done") for name in STEPS]
    if state in _STEP_OF:
        at, mark = _step_index(run, state), "current"
    else:  # FAILED, CANCELLED, CANCELLING: the step the run had reached
        reached = _last_pipeline_state(run.get("timeline", ()))
        at = _step_index(run, reached) if reached else 0
        mark = state.lower()
    return [
        Step(name, "done" if i < at else mark if i == at else "pending")
        for i, name in enumerate(STEPS)
    ]


def current_step(run: Mapping[str, Any]) -> str | None:
    """The step the run is at (or ended at); None once DONE."""
    for step in steps(run):
        if step.status not in {"done", "pending"}:
            return step.name
    return None


def _step_index(run: Mapping[str, Any], state: str) -> int:
    index = _STEP_OF[state]
    if state == "SYNCING" and (run.get("sync") or {}).get("job_id"):
        index = 4  # the sync job is on the scheduler: AwaitSync
    return index


def _last_pipeline_state(timeline: Sequence[Mapping[str, Any]]) -> str | None:
    for entry in reversed(timeline):
        if entry.get("to_state") in _STEP_OF:
            return str(entry["to_state"])
    return None


def job_text(run: Mapping[str, Any]) -> str:
    """The job's state in a few words."""
    job = run.get("job") or {}
    state = run["state"]
    job_id = job.get("job_id")
    if not job_id:
        if state == "SUBMITTING" and job.get("submit_attempts"):
            return f"submitting (attempt {job['submit_attempts']})"
        return "no job yet" if state not in ENDED else "no job"
    where = f"job {job_id}" + (f" on {job['cluster_name']}" if job.get("cluster_name") else "")
    if state in ("QUEUED", "RUNNING"):
        text = f"{where}: {state}"
    elif job.get("exit_code") is not None:
        text = f"{where}: ended, exit code {job['exit_code']}"
        if job.get("signal"):
            text += f", signal {job['signal']}"
    elif state == "CANCELLING":
        text = f"{where}: being cancelled"
    else:
        text = f"{where}: ended"
    sync_job = (run.get("sync") or {}).get("job_id")
    if sync_job:
        text += f"; sync job {sync_job}"
    if run.get("stale"):
        text += " (the cluster does not answer)"
    return text


def last_reason(run: Mapping[str, Any]) -> str:
    timeline = run.get("timeline") or ()
    return str(timeline[-1]["reason"]) if timeline else ""


def elapsed(run: Mapping[str, Any], now: datetime) -> float:
    """Seconds since the run was accepted; until it ended, once it has."""
    start = datetime.fromisoformat(run["created_at"])
    end = datetime.fromisoformat(run["updated_at"]) if run["state"] in ENDED else now
    return max(0.0, (end - start).total_seconds())


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h03m``."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
