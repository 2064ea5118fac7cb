"""What the REST API answers: response models, RFC 9457 problems, and the views of a run.

The request body of a submission is the domain's own :class:`SimulationRequest`; everything
here is presentation, built from the domain's objects by the ``*_view`` functions.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from obp_workflow.core.errors import (
    ClusterUnreachable,
    Conflict,
    DomainError,
    Forbidden,
    IllegalTransition,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    Unauthenticated,
)
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunEvent, RunState, SimulationRun
from obp_workflow.ports.instances import InstanceInfo
from obp_workflow.ports.knowledge_graph import RecordedProvenance
from obp_workflow.ports.runs import Page

#: Problem types are ``PROBLEM_TYPE_BASE + kind``; the kinds are the domain errors' stable kinds.
PROBLEM_TYPE_BASE = "https://openbrainplatform.org/problems/workflow/"
PROBLEM_JSON = "application/problem+json"


class _Model(BaseModel):
    """Every model here: its validator is built on first use, not on import."""

    model_config = ConfigDict(defer_build=True)


# ================================================================ problems (RFC 9457)


class FieldProblem(_Model):
    """One rejected value: where it was (``body.resources.nodes``, ``query.limit``) and why."""

    field: str
    rule: str


class Problem(_Model):
    """An error, as RFC 9457 problem details. ``type`` is stable per kind of error."""

    type: str = Field(description="A URI naming the kind of problem; stable, safe to branch on.")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    errors: list[FieldProblem] | None = Field(
        None, description="Every rejected value, for validation problems (422)."
    )


#: Status and title by problem kind; the first matching class of an error wins.
_STATUS: tuple[tuple[type[DomainError], int, str], ...] = (
    (InvalidRequest, 422, "Invalid request"),
    (Unauthenticated, 401, "Unauthorized"),
    (Forbidden, 403, "Forbidden"),
    (NotFound, 404, "Not found"),
    (Conflict, 409, "Conflict"),
    (IllegalTransition, 409, "Conflict"),
    (ClusterUnreachable, 503, "Service unavailable"),
    (ServiceUnavailable, 503, "Service unavailable"),
)


def problem(
    status: int,
    kind: str,
    title: str,
    detail: str,
    errors: list[FieldProblem] | None = None,
) -> Problem:
    return Problem(
        type=PROBLEM_TYPE_BASE + kind, title=title, status=status, detail=detail, errors=errors
    )


def problem_for(error: DomainError) -> Problem:
    """The problem a domain error is answered with; an unexpected kind is a 500 that says
    nothing of its cause (it is logged instead)."""
    for cls, status, title in _STATUS:
        if isinstance(error, cls):
            fields = None
            if isinstance(error, InvalidRequest):
                fields = [FieldProblem(field=e.field, rule=e.rule) for e in error.errors]
            return problem(status, error.kind, title, error.message, fields)
    return internal_error()


def internal_error() -> Problem:
    return problem(
        500,
        "internal-error",
        "Internal server error",
        "the service failed to handle this request; it has been logged",
    )


# ================================================================ runs


class RequesterView(_Model):
    subject: str
    username: str


class StaleView(_Model):
    """The cluster has not answered about this run since ``since``; the run is not failed."""

    since: AwareDatetime
    reason: str


class TimelineEntry(_Model):
    """One recorded change of the run, with its reason."""

    version: int
    at: AwareDatetime
    kind: str
    from_state: RunState | None
    to_state: RunState
    reason: str


class JobView(_Model):
    """The run's job on the project's cluster."""

    cluster_name: str | None
    job_id: str | None
    adopted: bool = Field(description="The job was found again by its tag after a lost reply.")
    submit_attempts: int
    exit_code: int | None
    signal: int | None


class SyncedFileView(_Model):
    path: str
    size: int
    location: str
    digest: str | None


class SyncView(_Model):
    """How the run's outputs left the cluster."""

    kind: str | None
    attempts: int
    job_id: str | None
    problem: str | None
    outcome: Literal["confirmed", "pending"]
    files: list[SyncedFileView]


class KnowledgeGraphView(_Model):
    activity_id: str | None
    entity_ids: list[str]


class RunView(_Model):
    """A run, whole: its request, where it is, and how it got there."""

    run_id: str
    virtual_lab_id: str
    project_id: str
    state: RunState
    terminal: bool
    stale: StaleView | None
    requested_by: RequesterView
    request: SimulationRequest
    idempotency_key: str | None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    version: int
    failure_reason: str | None
    cancelled_by: str | None
    scheduler_raw: str | None = Field(
        description="The scheduler's last line about the run's job, or then its sync job."
    )
    provisioning_status: str | None = Field(
        description="What the provisioner last said of the project's cluster while the run "
        "waited for it: its status, and the reason it gives."
    )
    job: JobView
    sync: SyncView
    knowledge_graph: KnowledgeGraphView
    timeline: list[TimelineEntry]


class RunSummary(_Model):
    """A run, in a listing."""

    run_id: str
    state: RunState
    terminal: bool
    stale: bool
    kind: str
    name: str | None
    requested_by: RequesterView
    created_at: AwareDatetime
    updated_at: AwareDatetime
    job_id: str | None
    failure_reason: str | None
    last_reason: str = Field(description="The reason of the run's latest recorded change.")


class RunPage(_Model):
    runs: list[RunSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` (with the same filter) for the next page; null at the end."
    )


class RunLog(_Model):
    run_id: str
    max_bytes: int
    text: str = Field(description="The end of the job's log (empty before the job exists).")


class RunOutputs(_Model):
    """The run's outputs as synchronised out of the cluster (relative path, size, digest, where
    they are now)."""

    run_id: str
    state: RunState
    synced: bool = Field(
        description="The outputs are confirmed at their destination. False (and `files` empty) "
        "until then; a run that ended without (FAILED, CANCELLED before its sync) stays false."
    )
    files: list[SyncedFileView]


class RunProvenanceView(_Model):
    """What the knowledge graph holds of the run, each document as the graph returns it."""

    run_id: str
    activity_id: str
    revision: int = Field(description="The activity's latest revision in the graph.")
    withdrawn: bool = Field(description="The registration was withdrawn (the run cancelled).")
    activity: dict[str, Any] = Field(description="The run's activity (JSON-LD).")
    entities: list[dict[str, Any]] = Field(description="One entity per output (JSON-LD).")


class CancelRequest(_Model):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    reason: str = Field("", max_length=500)


# ================================================================ instances and health


class InstanceDetail(_Model):
    instance_id: str
    status: str
    live: bool
    started_at: AwareDatetime | None
    stop_reason: str | None


class InstanceView(_Model):
    """The project's workflow container instance (null when none was ever started)."""

    virtual_lab_id: str
    project_id: str
    instance: InstanceDetail | None


class Health(_Model):
    status: Literal["ok"]


# ================================================================ views


def run_view(run: SimulationRun) -> RunView:
    h = run.header
    outcome = run.sync_outcome
    return RunView(
        run_id=run.run_id,
        virtual_lab_id=h.project.virtual_lab_id,
        project_id=h.project.project_id,
        state=run.state,
        terminal=run.terminal,
        stale=(
            StaleView(since=run.stale_since, reason=run.stale_reason)
            if run.stale_reason is not None and run.stale_since is not None
            else None
        ),
        requested_by=RequesterView(
            subject=h.requested_by.subject, username=h.requested_by.username
        ),
        request=h.request,
        idempotency_key=h.idempotency_key,
        created_at=h.created_at,
        updated_at=run.updated_at,
        version=run.version,
        failure_reason=run.failure_reason,
        cancelled_by=run.cancelled_by,
        scheduler_raw=run.scheduler_raw,
        provisioning_status=run.provisioning_status,
        job=JobView(
            cluster_name=run.cluster_name,
            job_id=run.job_id,
            adopted=run.job_adopted,
            submit_attempts=run.submit_attempts,
            exit_code=run.exit_code,
            signal=run.signal,
        ),
        sync=SyncView(
            kind=run.sync_kind,
            attempts=run.sync_attempts,
            job_id=run.sync_job_id,
            problem=run.sync_problem,
            outcome="confirmed" if outcome is not None else "pending",
            files=_synced_files(run),
        ),
        knowledge_graph=KnowledgeGraphView(
            activity_id=run.kg_activity_id, entity_ids=list(run.kg_entity_ids)
        ),
        timeline=[_timeline_entry(e) for e in run.events],
    )


def run_outputs(run: SimulationRun) -> RunOutputs:
    outcome = run.sync_outcome
    return RunOutputs(
        run_id=run.run_id,
        state=run.state,
        synced=outcome is not None,
        files=_synced_files(run),
    )


def run_provenance(run_id: str, recorded: RecordedProvenance) -> RunProvenanceView:
    return RunProvenanceView(
        run_id=run_id,
        activity_id=recorded.activity_id,
        revision=recorded.revision,
        withdrawn=recorded.withdrawn,
        activity=dict(recorded.activity),
        entities=[dict(e) for e in recorded.entities],
    )


def _synced_files(run: SimulationRun) -> list[SyncedFileView]:
    outcome = run.sync_outcome
    return [
        SyncedFileView(path=f.relative_path, size=f.size, location=f.location, digest=f.digest)
        for f in (outcome.files if outcome is not None else ())
    ]


def _timeline_entry(event: RunEvent) -> TimelineEntry:
    return TimelineEntry(
        version=event.version,
        at=event.at,
        kind=event.kind,
        from_state=event.from_state,
        to_state=event.to_state,
        reason=event.reason,
    )


def run_summary(run: SimulationRun) -> RunSummary:
    h = run.header
    return RunSummary(
        run_id=run.run_id,
        state=run.state,
        terminal=run.terminal,
        stale=run.stale,
        kind=h.request.kind,
        name=h.request.name,
        requested_by=RequesterView(
            subject=h.requested_by.subject, username=h.requested_by.username
        ),
        created_at=h.created_at,
        updated_at=run.updated_at,
        job_id=run.job_id,
        failure_reason=run.failure_reason,
        last_reason=run.events[-1].reason if run.events else "",
    )


def run_page(page: Page) -> RunPage:
    return RunPage(runs=[run_summary(r) for r in page.runs], next_cursor=page.next_cursor)


def instance_view(virtual_lab_id: str, project_id: str, info: InstanceInfo | None) -> InstanceView:
    return InstanceView(
        virtual_lab_id=virtual_lab_id,
        project_id=project_id,
        instance=(
            None
            if info is None
            else InstanceDetail(
                instance_id=info.instance_id,
                status=info.status,
                live=info.live,
                started_at=info.started_at,
                stop_reason=info.stop_reason,
            )
        ),
    )
