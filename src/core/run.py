"""The SimulationRun aggregate and its lifecycle.

The lifecycle is data (``TRANSITIONS``). Every change to a run is an event appended through one
method, ``_record``; the same ``_apply`` that changes the run applies events on replay, so a run
read back from its events is the run that was written. ``version`` counts the events.

    ACCEPTED -> PROVISIONING -> SUBMITTING -> QUEUED <-> RUNNING -> SYNCING -> REGISTERING -> DONE
    any active state -> FAILED;  cancel -> CANCELLING -> CANCELLED (or CANCELLED at once when
    nothing can be on the cluster yet).

"Cluster unreachable" is not a state: it is the STALE condition (``stale_reason``), recorded on
the run, cleared when the cluster answers, and never a cause of failure.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from obp_workflow.core.errors import CorruptRecord, IllegalTransition
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.jobs import JobObservation, JobPhase
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.sync import SyncOutcome

#: Every job the service submits is named (and commented) with this prefix and its run id.
TAG_PREFIX = "obp-"


class RunState(Enum):
    ACCEPTED = "ACCEPTED"
    PROVISIONING = "PROVISIONING"
    SUBMITTING = "SUBMITTING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SYNCING = "SYNCING"
    REGISTERING = "REGISTERING"
    DONE = "DONE"
    CANCELLING = "CANCELLING"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({RunState.DONE, RunState.FAILED, RunState.CANCELLED})
ACTIVE_STATES = frozenset(RunState) - TERMINAL_STATES
#: States in which a job of the run may exist on the scheduler and must be watched.
JOB_STATES = frozenset({RunState.QUEUED, RunState.RUNNING})
#: States a step of the pipeline moves (QUEUED and RUNNING wait on the monitor).
STEP_STATES = frozenset(
    {
        RunState.ACCEPTED,
        RunState.PROVISIONING,
        RunState.SUBMITTING,
        RunState.SYNCING,
        RunState.REGISTERING,
        RunState.CANCELLING,
    }
)

S = RunState
#: The lifecycle: every allowed move, and no other.
TRANSITIONS: Mapping[RunState, frozenset[RunState]] = {
    S.ACCEPTED: frozenset({S.PROVISIONING, S.FAILED, S.CANCELLED}),
    S.PROVISIONING: frozenset({S.SUBMITTING, S.FAILED, S.CANCELLED}),
    S.SUBMITTING: frozenset({S.QUEUED, S.FAILED, S.CANCELLING, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.SYNCING, S.FAILED, S.CANCELLING, S.CANCELLED}),
    S.RUNNING: frozenset({S.QUEUED, S.SYNCING, S.FAILED, S.CANCELLING, S.CANCELLED}),
    S.SYNCING: frozenset({S.REGISTERING, S.FAILED, S.CANCELLING, S.CANCELLED}),
    S.REGISTERING: frozenset({S.DONE, S.FAILED, S.CANCELLING}),
    S.CANCELLING: frozenset({S.CANCELLED, S.FAILED}),
    S.DONE: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
del S


@dataclass(frozen=True)
class Requester:
    """Who asked for the run (from the verified token; never the token itself)."""

    subject: str
    username: str


@dataclass(frozen=True)
class RunEvent:
    """One recorded change. ``data`` holds the facts it sets, as strings."""

    version: int
    at: datetime
    kind: str
    from_state: RunState | None
    to_state: RunState
    reason: str = ""
    data: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_transition(self) -> bool:
        return self.from_state is not self.to_state


@dataclass(frozen=True)
class RunHeader:
    """What a run is born with and never changes."""

    run_id: str
    project: ProjectRef
    requested_by: Requester
    request: SimulationRequest
    created_at: datetime
    idempotency_key: str | None = None

    @property
    def tag(self) -> str:
        """The scheduler tag (job name and comment) that finds this run's job again."""
        return f"{TAG_PREFIX}{self.run_id}"


@dataclass(frozen=True)
class JobWatch:
    """What the monitor needs of a run whose job is on the scheduler: a light projection,
    kept by repositories beside the run so that a monitor cycle reads no whole run that the
    scheduler has nothing new about."""

    project: ProjectRef
    run_id: str
    job_id: str
    last_raw: str | None
    stale: bool


@dataclass(frozen=True)
class RunBrief:
    """An unfinished run as a round of the pipeline sees it: enough to tell whether a step can
    move it now, without reading it whole."""

    project: ProjectRef
    run_id: str
    state: RunState
    #: A job of the run (the simulation, or the elevated sync job) is on the scheduler: the
    #: monitor moves the run when the job changes, no step can.
    watching: bool

    @property
    def movable(self) -> bool:
        return self.state in STEP_STATES and not self.watching


class SimulationRun:
    """A run: its header, its current facts, and the events that produced them."""

    def __init__(self, header: RunHeader) -> None:
        self.header = header
        self.state = RunState.ACCEPTED
        self.version = 0
        self.updated_at = header.created_at
        self.events: list[RunEvent] = []
        self.cluster_name: str | None = None
        #: What the provisioner last said of the cluster while the run waited for it.
        self.provisioning_status: str | None = None
        self.job_id: str | None = None
        self.job_adopted = False
        self.submit_attempts = 0
        self.submit_unclear = 0
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.scheduler_raw: str | None = None
        self.stale_since: datetime | None = None
        self.stale_reason: str | None = None
        self.failure_reason: str | None = None
        self.cancelled_by: str | None = None
        self.sync_kind: str | None = None
        self.sync_job_id: str | None = None
        self.sync_job_done = False
        self.sync_attempts = 0
        self.sync_problem: str | None = None
        self.sync_outcome: SyncOutcome | None = None
        self.kg_activity_id: str | None = None
        self.kg_entity_ids: tuple[str, ...] = ()

    # ---------------------------------------------------------------- creation and replay

    @classmethod
    def accept(cls, header: RunHeader) -> SimulationRun:
        run = cls(header)
        run._record(header.created_at, "accepted", RunState.ACCEPTED, "request accepted")
        return run

    @classmethod
    def replay(cls, header: RunHeader, events: Iterable[RunEvent]) -> SimulationRun:
        """Rebuild a run from its events, checking that they form a legal history."""
        run = cls(header)
        for event in events:
            if event.version != run.version + 1:
                raise CorruptRecord(
                    f"run {header.run_id}: event {event.version} follows version {run.version}"
                )
            if not _legal_next(run, event):
                raise CorruptRecord(
                    f"run {header.run_id}: event {event.version} is not a legal move from "
                    f"{run.state.value}"
                )
            run._apply(event)
        if not run.events:
            raise CorruptRecord(f"run {header.run_id} has no events")
        return run

    # ---------------------------------------------------------------- reading

    @property
    def run_id(self) -> str:
        return self.header.run_id

    @property
    def project(self) -> ProjectRef:
        return self.header.project

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @property
    def stale(self) -> bool:
        return self.stale_reason is not None

    def states(self) -> list[RunState]:
        """The path the run took, from ACCEPTED to where it is."""
        return [e.to_state for e in self.events if e.is_transition or e.version == 1]

    def watch(self) -> JobWatch | None:
        """The scheduler job the monitor must watch for this run, if any."""
        if self.state in JOB_STATES and self.job_id:
            job = self.job_id
        elif self.state is RunState.SYNCING and self.sync_job_id and not self.sync_job_done:
            job = self.sync_job_id
        else:
            return None
        return JobWatch(self.project, self.run_id, job, self.scheduler_raw, self.stale)

    def brief(self) -> RunBrief:
        return RunBrief(self.project, self.run_id, self.state, self.watch() is not None)

    def may_have_cluster_job(self) -> bool:
        """Could a job of this run exist on the scheduler (submitted, or submission unclear)?"""
        return self.job_id is not None or self.submit_attempts > 0

    # ---------------------------------------------------------------- the commands

    def start_provisioning(self, at: datetime) -> None:
        self._transition(at, "provisioning", RunState.PROVISIONING, "cluster requested")

    def provisioning_observed(self, at: datetime, status: str) -> bool:
        """What the provisioner says of the cluster the run waits for (its status, and the
        reason it gives); recorded when it changes. True when the run changed."""
        self._require(RunState.PROVISIONING)
        status = status[:500]
        if status == (self.provisioning_status or ""):
            return False
        self._record(
            at,
            "provisioning-status",
            RunState.PROVISIONING,
            f"the provisioner says: {status}",
            {"provisioning": status},
        )
        return True

    def cluster_ready(self, at: datetime, cluster_name: str) -> None:
        self._transition(
            at,
            "cluster-ready",
            RunState.SUBMITTING,
            f"cluster {cluster_name} is ready",
            {"cluster": cluster_name},
        )

    def record_submit_attempt(self, at: datetime) -> None:
        """Persisted before every sbatch: the intent that makes a lost reply recoverable."""
        self._require(RunState.SUBMITTING)
        self._record(
            at,
            "submit-attempt",
            self.state,
            f"submission attempt {self.submit_attempts + 1}",
            {"submit_attempts": str(self.submit_attempts + 1)},
        )

    def record_submit_unclear(self, at: datetime) -> None:
        """A submission's reply was lost and no job carries the run's tag: it will be retried."""
        self._require(RunState.SUBMITTING)
        self._record(
            at,
            "submit-unclear",
            self.state,
            "the submission was not confirmed and no job carries the run's tag",
            {"submit_unclear": str(self.submit_unclear + 1)},
        )

    def record_submit_not_sent(self, at: datetime, reason: str) -> None:
        """A submission that never reached the scheduler (the cluster could not be reached):
        it settles its attempt without counting as unconfirmed."""
        self._require(RunState.SUBMITTING)
        self._record(at, "submit-not-sent", self.state, f"the job was not submitted: {reason}")

    def submission_pending_since(self) -> datetime | None:
        """When the last submission attempt was recorded, if nothing has settled it since
        (no job, no lost reply, no refusal to connect): some process may be submitting it
        right now, or died doing so."""
        for event in reversed(self.events):
            if event.kind == "submit-attempt":
                return event.at
            if event.kind in ("submit-unclear", "submit-not-sent") or event.is_transition:
                return None
        return None

    def job_submitted(self, at: datetime, job_id: str, *, adopted: bool = False) -> None:
        self._require(RunState.SUBMITTING)
        if not job_id:
            raise IllegalTransition("a submitted job needs its job id")
        reason = (
            f"job {job_id} found on the cluster by its tag and adopted"
            if adopted
            else f"job {job_id} submitted"
        )
        self._transition(
            at,
            "job-submitted",
            RunState.QUEUED,
            reason,
            {"job_id": job_id, "adopted": "1" if adopted else ""},
        )

    def job_observed(self, at: datetime, obs: JobObservation) -> bool:
        """Apply what the scheduler said of the run's job. True when the run changed."""
        if self.state not in JOB_STATES and self.state is not RunState.CANCELLING:
            raise IllegalTransition(
                f"run {self.run_id} has no job to observe in {self.state.value}"
            )
        if obs.job_id != self.job_id:
            raise IllegalTransition(f"job {obs.job_id} is not the job of run {self.run_id}")
        phase = obs.phase
        if phase is JobPhase.UNKNOWN:
            return self.mark_stale(
                at, f"the scheduler could not tell the state of job {obs.job_id}"
            )
        facts = _job_facts(obs)
        if self.state is RunState.CANCELLING:
            if phase in (JobPhase.WAITING, JobPhase.RUNNING):
                return self._note(at, facts, f"job {obs.job_id} is {obs.state.value}")
            self._transition(
                at,
                "job-ended",
                RunState.CANCELLED,
                f"job {obs.job_id} ended as {obs.state.value} after the cancel request",
                facts,
            )
            return True
        target = {
            JobPhase.WAITING: RunState.QUEUED,
            JobPhase.RUNNING: RunState.RUNNING,
            JobPhase.SUCCEEDED: RunState.SYNCING,
            JobPhase.FAILED: RunState.FAILED,
            JobPhase.CANCELLED: RunState.CANCELLED,
        }[phase]
        if target is self.state:
            return self._note(at, facts, f"job {obs.job_id} is {obs.state.value}")
        if target is RunState.FAILED:
            facts["failure_reason"] = obs.failure_reason()
            reason = facts["failure_reason"]
        elif target is RunState.CANCELLED:
            facts["cancelled_by"] = "scheduler"
            reason = f"job {obs.job_id} was cancelled on the cluster"
        elif target is RunState.SYNCING:
            reason = f"job {obs.job_id} completed"
        else:
            reason = f"job {obs.job_id} is {obs.state.value}"
        self._transition(at, "job-" + target.value.lower(), target, reason, facts)
        return True

    def mark_stale(self, at: datetime, reason: str) -> bool:
        """The cluster did not answer. Recorded once; never a failure."""
        if self.terminal:
            raise IllegalTransition(f"run {self.run_id} is {self.state.value}")
        if self.stale_reason is not None:
            return False
        self._record(at, "stale", self.state, reason, {"stale": reason})
        return True

    def clear_stale(self, at: datetime) -> bool:
        if self.stale_reason is None or self.terminal:
            return False
        self._record(at, "recovered", self.state, "the cluster answers again", {"stale": ""})
        return True

    def sync_planned(self, at: datetime, kind: str, files: int) -> None:
        self._require(RunState.SYNCING)
        self._record(
            at,
            "sync-planned",
            self.state,
            f"{files} outputs to synchronise by {kind}",
            {"sync_kind": kind},
        )

    def sync_job_started(self, at: datetime, job_id: str) -> None:
        self._require(RunState.SYNCING)
        if self.sync_job_id is not None:
            raise IllegalTransition(f"run {self.run_id} already has sync job {self.sync_job_id}")
        self._record(
            at,
            "sync-job-started",
            self.state,
            f"sync job {job_id} submitted",
            {"sync_job_id": job_id, "sync_job_done": ""},
        )

    def sync_job_observed(self, at: datetime, obs: JobObservation) -> bool:
        """Apply the scheduler's word on the sync job. True when the run changed."""
        self._require(RunState.SYNCING)
        if obs.job_id != self.sync_job_id:
            raise IllegalTransition(f"job {obs.job_id} is not the sync job of run {self.run_id}")
        if obs.phase is JobPhase.UNKNOWN:
            return self.mark_stale(
                at, f"the scheduler could not tell the state of job {obs.job_id}"
            )
        if obs.phase in (JobPhase.WAITING, JobPhase.RUNNING):
            return self._note(
                at, {"scheduler_raw": obs.raw}, f"sync job {obs.job_id} is {obs.state.value}"
            )
        if obs.phase is JobPhase.SUCCEEDED:
            self._record(
                at,
                "sync-job-completed",
                self.state,
                f"sync job {obs.job_id} completed",
                {"sync_job_done": "1", "scheduler_raw": obs.raw, "stale": ""},
            )
            return True
        self.sync_attempt_failed(at, f"sync job {obs.job_id}: {obs.failure_reason()}")
        return True

    def sync_attempt_failed(self, at: datetime, problem: str) -> None:
        """One sync attempt did not deliver; the next one starts from a clean slate."""
        self._require(RunState.SYNCING)
        self._record(
            at,
            "sync-attempt-failed",
            self.state,
            problem,
            {
                "sync_attempts": str(self.sync_attempts + 1),
                "sync_job_id": "",
                "sync_job_done": "",
                "sync_problem": problem,
            },
        )

    def sync_confirmed(self, at: datetime, outcome: SyncOutcome) -> None:
        self._transition(
            at,
            "sync-confirmed",
            RunState.REGISTERING,
            f"{len(outcome.files)} outputs confirmed ({outcome.kind})",
            {"sync_outcome": outcome.to_json()},
        )

    def registered(self, at: datetime, activity_id: str, entity_ids: Sequence[str]) -> None:
        if not activity_id:
            raise IllegalTransition("a registration needs the activity's id")
        self._transition(
            at,
            "registered",
            RunState.DONE,
            "results registered in the knowledge graph",
            {"kg_activity": activity_id, "kg_entities": json.dumps(list(entity_ids))},
        )

    def fail(self, at: datetime, reason: str) -> None:
        if not reason:
            raise IllegalTransition("a failure needs a reason")
        self._transition(at, "failed", RunState.FAILED, reason, {"failure_reason": reason})

    def request_cancel(self, at: datetime, by: str, reason: str = "") -> None:
        """Cancel at any active state.

        Through CANCELLING when something must be undone first: a job that may be on the
        cluster, a running sync job, or a registration that may have reached the knowledge
        graph; straight to CANCELLED when nothing can have happened yet.
        """
        if not by:
            raise IllegalTransition("a cancellation needs who asked for it")
        if self.state is RunState.CANCELLING:
            raise IllegalTransition(f"run {self.run_id} is already being cancelled")
        target = RunState.CANCELLING if self._has_work_to_undo() else RunState.CANCELLED
        why = reason or f"cancelled by {by}"
        self._transition(at, "cancel-requested", target, why, {"cancelled_by": by})

    def _has_work_to_undo(self) -> bool:
        if self.state is RunState.REGISTERING:
            return True
        if self.state is RunState.SYNCING:
            return self.sync_job_id is not None and not self.sync_job_done
        return self.state in JOB_STATES | {RunState.SUBMITTING} and self.may_have_cluster_job()

    def cancelled_from(self) -> RunState | None:
        """The state the run was in when its cancellation was asked for."""
        for event in reversed(self.events):
            if event.kind == "cancel-requested":
                return event.from_state
        return None

    def cancel_confirmed(self, at: datetime) -> None:
        self._require(RunState.CANCELLING)
        self._transition(at, "cancelled", RunState.CANCELLED, "the cluster confirmed the cancel")

    # ---------------------------------------------------------------- the machinery

    def _require(self, state: RunState) -> None:
        if self.state is not state:
            raise IllegalTransition(f"run {self.run_id} is {self.state.value}, not {state.value}")

    def _transition(
        self,
        at: datetime,
        kind: str,
        target: RunState,
        reason: str,
        data: Mapping[str, str] | None = None,
    ) -> None:
        if target not in TRANSITIONS[self.state]:
            raise IllegalTransition(
                f"run {self.run_id} cannot go from {self.state.value} to {target.value}"
            )
        facts = dict(data or {})
        if self.stale_reason is not None:
            facts.setdefault("stale", "")  # an answer from the cluster ends the stale condition
        self._record(at, kind, target, reason, facts)

    def _note(self, at: datetime, facts: Mapping[str, str], reason: str) -> bool:
        """Record a fresh scheduler answer when it says something new; clear STALE."""
        changed = {k: v for k, v in facts.items() if _fact_value(self, k) != v}
        if self.stale_reason is not None:
            changed["stale"] = ""
        if not changed:
            return False
        self._record(at, "observed", self.state, reason, changed)
        return True

    def _record(
        self,
        at: datetime,
        kind: str,
        target: RunState,
        reason: str,
        data: Mapping[str, str] | None = None,
    ) -> None:
        # The clock may step back (NTP); a run's timeline never does.
        stamp = max(at, self.updated_at) if self.events else at
        event = RunEvent(
            version=self.version + 1,
            at=stamp,
            kind=kind,
            from_state=self.state if self.events else None,
            to_state=target,
            reason=reason,
            data=dict(data or {}),
        )
        self._apply(event)

    def _apply(self, event: RunEvent) -> None:
        for key, value in event.data.items():
            _apply_fact(self, key, value, event)
        self.state = event.to_state
        self.version = event.version
        self.updated_at = event.at
        self.events.append(event)

    def __repr__(self) -> str:
        return f"SimulationRun({self.run_id!r}, {self.state.value}, v{self.version})"


def _legal_next(run: SimulationRun, event: RunEvent) -> bool:
    if not run.events:
        return event.from_state is None and event.to_state is RunState.ACCEPTED
    if event.from_state is not run.state:
        return False
    return not event.is_transition or event.to_state in TRANSITIONS[run.state]


def _job_facts(obs: JobObservation) -> dict[str, str]:
    facts = {"scheduler_raw": obs.raw}
    if obs.exit_code is not None:
        facts["exit_code"] = str(obs.exit_code)
        facts["signal"] = str(obs.signal or 0)
    return facts


def _opt(value: str) -> str | None:
    return value or None


def _opt_int(value: str) -> int | None:
    return int(value) if value else None


@dataclass(frozen=True)
class _Fact:
    """How one fact of ``RunEvent.data`` lands on the run."""

    attr: str
    decode: Callable[[str], object] = _opt


#: Every fact an event may carry. ``stale`` is handled apart: it also stamps ``stale_since``.
_FACTS: Mapping[str, _Fact] = {
    "cluster": _Fact("cluster_name"),
    "provisioning": _Fact("provisioning_status"),
    "job_id": _Fact("job_id"),
    "adopted": _Fact("job_adopted", bool),
    "submit_attempts": _Fact("submit_attempts", int),
    "submit_unclear": _Fact("submit_unclear", int),
    "exit_code": _Fact("exit_code", _opt_int),
    "signal": _Fact("signal", _opt_int),
    "scheduler_raw": _Fact("scheduler_raw"),
    "failure_reason": _Fact("failure_reason"),
    "cancelled_by": _Fact("cancelled_by"),
    "sync_kind": _Fact("sync_kind"),
    "sync_job_id": _Fact("sync_job_id"),
    "sync_job_done": _Fact("sync_job_done", bool),
    "sync_attempts": _Fact("sync_attempts", int),
    "sync_problem": _Fact("sync_problem"),
    "sync_outcome": _Fact("sync_outcome", lambda v: SyncOutcome.from_json(v) if v else None),
    "kg_activity": _Fact("kg_activity_id"),
    "kg_entities": _Fact("kg_entity_ids", lambda v: tuple(json.loads(v)) if v else ()),
}


def _apply_fact(run: SimulationRun, key: str, value: str, event: RunEvent) -> None:
    if key == "stale":
        run.stale_reason = _opt(value)
        run.stale_since = event.at if value else None
        return
    fact = _FACTS.get(key)
    if fact is None:
        raise CorruptRecord(f"run {run.run_id}: event {event.version} sets unknown fact {key!r}")
    try:
        setattr(run, fact.attr, fact.decode(value))
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptRecord(
            f"run {run.run_id}: event {event.version} has an unreadable {key!r}"
        ) from exc


def _fact_value(run: SimulationRun, key: str) -> str:
    """The current value of a simple fact, encoded as events carry it."""
    value = getattr(run, _FACTS[key].attr)
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    return str(value)
