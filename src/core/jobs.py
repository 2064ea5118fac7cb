"""Jobs on the cluster's scheduler, as observed: every Slurm state, mapped explicitly."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class JobState(Enum):
    """Slurm's job states, plus UNKNOWN for "the scheduler could not tell us"."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    RESIZING = "RESIZING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, text: str) -> JobState:
        """Read a state as squeue or sacct prints it ("CANCELLED by 1000" included)."""
        word = text.strip().split(" ", 1)[0].rstrip("+").upper()
        aliases = {
            "CA": "CANCELLED",
            "CD": "COMPLETED",
            "F": "FAILED",
            "PD": "PENDING",
            "R": "RUNNING",
            "CG": "COMPLETING",
            "TO": "TIMEOUT",
            "OOM": "OUT_OF_MEMORY",
            "NF": "NODE_FAIL",
            "PR": "PREEMPTED",
            "BF": "BOOT_FAIL",
            "DL": "DEADLINE",
            "CF": "CONFIGURING",
            "S": "SUSPENDED",
            "RQ": "REQUEUED",
            "RS": "RESIZING",
        }
        word = aliases.get(word, word)
        try:
            return cls(word)
        except ValueError:
            return cls.UNKNOWN


class JobPhase(Enum):
    """What a scheduler state means for a run."""

    WAITING = "waiting"  # accepted by the scheduler, not started
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # no positive evidence either way: never a failure


PHASE_OF: dict[JobState, JobPhase] = {
    JobState.PENDING: JobPhase.WAITING,
    JobState.CONFIGURING: JobPhase.WAITING,
    JobState.REQUEUED: JobPhase.WAITING,
    JobState.RESIZING: JobPhase.WAITING,
    JobState.RUNNING: JobPhase.RUNNING,
    JobState.COMPLETING: JobPhase.RUNNING,
    JobState.SUSPENDED: JobPhase.RUNNING,
    JobState.COMPLETED: JobPhase.SUCCEEDED,
    JobState.FAILED: JobPhase.FAILED,
    JobState.TIMEOUT: JobPhase.FAILED,
    JobState.NODE_FAIL: JobPhase.FAILED,
    JobState.PREEMPTED: JobPhase.FAILED,
    JobState.OUT_OF_MEMORY: JobPhase.FAILED,
    JobState.BOOT_FAIL: JobPhase.FAILED,
    JobState.DEADLINE: JobPhase.FAILED,
    JobState.CANCELLED: JobPhase.CANCELLED,
    JobState.UNKNOWN: JobPhase.UNKNOWN,
}

_FAILURE_TEXT: dict[JobState, str] = {
    JobState.FAILED: "the job failed",
    JobState.TIMEOUT: "the job reached its time limit",
    JobState.NODE_FAIL: "a node of the job failed",
    JobState.PREEMPTED: "the job was preempted",
    JobState.OUT_OF_MEMORY: "the job ran out of memory",
    JobState.BOOT_FAIL: "a node of the job failed to boot",
    JobState.DEADLINE: "the job missed its deadline",
}


@dataclass(frozen=True)
class JobObservation:
    """One job's state as the scheduler reported it, with the raw line it was read from."""

    job_id: str
    state: JobState
    exit_code: int | None = None
    signal: int | None = None
    raw: str = ""
    source: str = ""  # "squeue", "sacct" or "" when nothing answered

    @property
    def phase(self) -> JobPhase:
        return PHASE_OF[self.state]

    def failure_reason(self) -> str:
        base = _FAILURE_TEXT.get(self.state, f"the job ended as {self.state.value}")
        if self.exit_code is not None:
            base += f" (exit code {self.exit_code}"
            base += f", signal {self.signal})" if self.signal else ")"
        return base

    @classmethod
    def unknown(cls, job_id: str, raw: str = "") -> JobObservation:
        return cls(job_id, JobState.UNKNOWN, raw=raw)


def parse_exit_code(text: str) -> tuple[int | None, int | None]:
    """Slurm's ``code:signal``; anything unreadable is (None, None)."""
    code, _, sig = text.strip().partition(":")
    try:
        return int(code), int(sig or 0)
    except ValueError:
        return None, None


@dataclass(frozen=True)
class JobAccounting:
    """A finished job's record in the scheduler's accounting (Slurm: ``sacct``), as the
    provenance of a run reports it. Times are as the scheduler printed them (its local time)."""

    job_id: str
    state: JobState
    exit_code: int | None
    signal: int | None
    nodes: int | None
    node_list: str
    elapsed_seconds: int | None
    started: str | None
    ended: str | None
    name: str = ""
    submitted: str | None = None
    raw: str = ""


#: The ``sacct --format`` that :func:`parse_accounting_line` reads (JobName may hold ``|``:
#: it comes last but one, and Submit never does).
ACCOUNTING_FIELDS = "JobID,State,ExitCode,NNodes,NodeList,ElapsedRaw,Start,End,JobName,Submit"


def parse_accounting_line(line: str) -> JobAccounting | None:
    """``JobID|State|ExitCode|NNodes|NodeList|ElapsedRaw|Start|End|JobName|Submit``
    (``sacct -X -P``, :data:`ACCOUNTING_FIELDS`); None for a line that is not one. Unknown and
    empty values (``Unknown``, ``None assigned``) are None or empty."""
    parts = line.strip().split("|", 8)
    if len(parts) != 9 or "|" not in parts[8] or not parts[0].strip().isdigit():
        return None
    name, _, submit = parts[8].rpartition("|")
    job_id, state, exit_code, nodes, node_list, elapsed, start, end = (p.strip() for p in parts[:8])
    name, submit = name.strip(), submit.strip()
    code, signal = parse_exit_code(exit_code)
    return JobAccounting(
        job_id=job_id,
        state=JobState.parse(state),
        exit_code=code,
        signal=signal,
        nodes=int(nodes) if nodes.isdigit() else None,
        node_list="" if node_list in ("", "None assigned") else node_list,
        elapsed_seconds=int(elapsed) if elapsed.isdigit() else None,
        started=_slurm_time(start),
        ended=_slurm_time(end),
        name=name,
        submitted=_slurm_time(submit),
        raw=line.strip(),
    )


#: ``Key=value`` pairs of ``scontrol -o show job`` (a value runs to the next `` Key=``).
_CONTROLLER_FIELD = re.compile(r"([A-Za-z][A-Za-z/:_]*)=(.*?)(?= [A-Za-z][A-Za-z/:_]*=|$)")


def parse_controller_record(text: str) -> JobAccounting | None:
    """A finished job's record as the controller still holds it (``scontrol -o show job``,
    for ``MinJobAge`` after the job ends), in the shape of its accounting record; None when the
    text is not one job's record or the job has not finished. The controller knows the job's
    final state at once, while slurmdbd's record arrives seconds later."""
    fields = dict(_CONTROLLER_FIELD.findall(text.strip()))
    job_id = fields.get("JobId", "")
    if not job_id.isdigit():
        return None
    state = JobState.parse(fields.get("JobState", "").split()[0] if fields.get("JobState") else "")
    if PHASE_OF[state] in (JobPhase.WAITING, JobPhase.RUNNING, JobPhase.UNKNOWN):
        return None
    code, signal = parse_exit_code(fields.get("ExitCode", ""))
    nodes = fields.get("NumNodes", "")
    node_list = fields.get("NodeList", "")
    return JobAccounting(
        job_id=job_id,
        state=state,
        exit_code=code,
        signal=signal,
        nodes=int(nodes) if nodes.isdigit() else None,
        node_list="" if node_list in ("", "(null)") else node_list,
        elapsed_seconds=_duration_seconds(fields.get("RunTime", "")),
        started=_slurm_time(fields.get("StartTime", "")),
        ended=_slurm_time(fields.get("EndTime", "")),
        name=fields.get("JobName", ""),
        submitted=_slurm_time(fields.get("SubmitTime", "")),
        raw=" ".join(
            f"{k}={fields[k]}" for k in ("JobId", "JobState", "ExitCode", "RunTime") if k in fields
        ),
    )


def _duration_seconds(text: str) -> int | None:
    """Slurm's ``[D-]HH:MM:SS`` (or ``MM:SS``) as seconds; None when unreadable."""
    days, _, clock = text.strip().rpartition("-")
    parts = clock.split(":")
    if (
        not 2 <= len(parts) <= 3
        or not all(p.isdigit() for p in parts)
        or not (days or "0").isdigit()
    ):
        return None
    seconds = 0
    for p in parts:
        seconds = seconds * 60 + int(p)
    return int(days or 0) * 86400 + seconds


def _slurm_time(text: str) -> str | None:
    return None if text in ("", "Unknown", "None") else text
