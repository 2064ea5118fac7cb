"""The routes of the REST API: each reads its parameters and calls one request use case.

The caller (``app.context["principal"]``) and the requests side of the service
(``app.context["requests"]``, a callable that builds it on first use) are set by
:func:`~.api.handle` for each event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query
from pydantic import StringConstraints

from obp_workflow.core.errors import Unauthenticated
from obp_workflow.core.identity import UUID_PATTERN, Principal, ProjectRef
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState

from .models import (
    CancelRequest,
    Health,
    InstanceView,
    RunLog,
    RunOutputs,
    RunPage,
    RunProvenanceView,
    RunView,
    instance_view,
    run_outputs,
    run_page,
    run_provenance,
    run_view,
)
from .resolver import JSON, app, route

if TYPE_CHECKING:
    from obp_workflow.application.requests import Requests

_STATES = "|".join(s.value for s in RunState)
STATE_FILTER_PATTERN = rf"^({_STATES})(,({_STATES}))*$"

RUNS = "/v1/virtual-labs/<vlab>/projects/<project>/runs"
#: Only the canonical spelling of an id (a `UUID` also reads upper case, braces, urn:uuid:...).
_UUID: dict[str, Any] = {"pattern": UUID_PATTERN, "json_schema_extra": {"format": "uuid"}}
VlabId = Annotated[str, Path(description="The Virtual Lab's id.", **_UUID)]
ProjectId = Annotated[str, Path(description="The project's id, in that Virtual Lab.", **_UUID)]
#: Any other string is a run that does not exist (404), like any unknown id.
RunId = Annotated[str, Path(description="The run's id.", min_length=1, max_length=256)]
StateFilter = Annotated[str, StringConstraints(pattern=STATE_FILTER_PATTERN)]


@route(
    "POST",
    RUNS,
    success=(202, RunView, "The run is recorded (or this Idempotency-Key's run is returned)"),
    problems=(404, 409, 413, 415, 422, 503),
    operation_id="submitRun",
    summary="Submit a simulation run",
    tag="runs",
    body=True,
    headers={"Location": "The run's URL path"},
)
def submit_run(
    vlab: VlabId,
    project: ProjectId,
    request: Annotated[SimulationRequest, Body(description="What to run, with what, where.")],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="Repeat a submission safely: the same key and body return the same run.",
            min_length=1,
            max_length=128,
            pattern=r"^[\x21-\x7e]+$",
        ),
    ] = None,
) -> Response[RunView]:
    ref = _project(vlab, project)
    run = _requests().submit(_principal(), ref, request, idempotency_key)
    location = f"{_runs_path(ref)}/{run.run_id}"
    return Response(202, JSON, run_view(run), headers={"Location": location})


@route(
    "GET",
    RUNS,
    success=(200, RunPage, "A page of the project's runs, newest first"),
    problems=(404, 422, 503),
    operation_id="listRuns",
    summary="List the project's runs",
    tag="runs",
)
def list_runs(
    vlab: VlabId,
    project: ProjectId,
    limit: Annotated[int, Query(ge=1, le=500, description="Runs per page.")] = 50,
    cursor: Annotated[
        str | None,
        Query(min_length=1, max_length=2048, description="`next_cursor` of the previous page."),
    ] = None,
    state: Annotated[
        list[StateFilter] | None,
        Query(description="Only runs in these states: repeat the parameter or join with ','."),
    ] = None,
) -> Response[RunPage]:
    ref = _project(vlab, project)
    states = {RunState(s) for item in state or () for s in item.split(",")} or None
    page = _requests().list_runs(_principal(), ref, states, cursor, limit)
    return Response(200, JSON, run_page(page))


@route(
    "GET",
    RUNS + "/<run>",
    success=(200, RunView, "The run: state, stale condition, timeline, job, sync, registration"),
    problems=(404, 422, 503),
    operation_id="getRun",
    summary="Read one run",
    tag="runs",
)
def get_run(vlab: VlabId, project: ProjectId, run: RunId) -> Response[RunView]:
    found = _requests().get(_principal(), _project(vlab, project), run)
    return Response(200, JSON, run_view(found))


@route(
    "POST",
    RUNS + "/<run>/cancel",
    success=(202, RunView, "The cancel is recorded (repeating it is harmless)"),
    problems=(404, 409, 413, 415, 422, 503),
    operation_id="cancelRun",
    summary="Cancel a run",
    tag="runs",
    body=True,
)
def cancel_run(
    vlab: VlabId,
    project: ProjectId,
    run: RunId,
    body: Annotated[CancelRequest | None, Body(description="Why (optional).")] = None,
) -> Response[RunView]:
    reason = body.reason if body is not None else ""
    cancelled = _requests().cancel(_principal(), _project(vlab, project), run, reason)
    return Response(202, JSON, run_view(cancelled))


@route(
    "GET",
    RUNS + "/<run>/log",
    success=(200, RunLog, "The end of the run's job log"),
    problems=(404, 422, 503),
    operation_id="getRunLog",
    summary="Read the end of a run's log",
    tag="runs",
)
def run_log(
    vlab: VlabId,
    project: ProjectId,
    run: RunId,
    max_bytes: Annotated[
        int, Query(ge=1, le=16 * 1024 * 1024, description="At most this many bytes.")
    ] = 65536,
) -> Response[RunLog]:
    text = _requests().log(_principal(), _project(vlab, project), run, max_bytes)
    return Response(200, JSON, RunLog(run_id=run, max_bytes=max_bytes, text=text))


@route(
    "GET",
    RUNS + "/<run>/outputs",
    success=(
        200,
        RunOutputs,
        "The run's synchronised outputs: `synced` is false and the list empty until its sync "
        "is confirmed",
    ),
    problems=(404, 422, 503),
    operation_id="getRunOutputs",
    summary="List a run's synchronised outputs",
    tag="runs",
)
def get_run_outputs(vlab: VlabId, project: ProjectId, run: RunId) -> Response[RunOutputs]:
    found = _requests().get(_principal(), _project(vlab, project), run)
    return Response(200, JSON, run_outputs(found))


@route(
    "GET",
    RUNS + "/<run>/provenance",
    success=(
        200,
        RunProvenanceView,
        "What the knowledge graph holds of the run (404 while nothing is registered)",
    ),
    problems=(404, 422, 503),
    operation_id="getRunProvenance",
    summary="Read a run's provenance from the knowledge graph",
    tag="runs",
)
def get_run_provenance(vlab: VlabId, project: ProjectId, run: RunId) -> Response[RunProvenanceView]:
    recorded = _requests().provenance(_principal(), _project(vlab, project), run)
    return Response(200, JSON, run_provenance(run, recorded))


@route(
    "GET",
    "/v1/virtual-labs/<vlab>/projects/<project>/instance",
    success=(200, InstanceView, "The project's workflow instance"),
    problems=(404, 422, 503),
    operation_id="getInstance",
    summary="Read the project's workflow instance",
    tag="instances",
)
def get_instance(vlab: VlabId, project: ProjectId) -> Response[InstanceView]:
    ref = _project(vlab, project)
    info = _requests().instance(_principal(), ref)
    return Response(200, JSON, instance_view(ref.virtual_lab_id, ref.project_id, info))


@route(
    "GET",
    "/v1/healthz",
    success=(200, Health, "The API answers"),
    problems=(),
    operation_id="health",
    summary="Liveness",
    tag="service",
    public=True,
)
def healthz() -> Response[Health]:
    return Response(200, JSON, Health(status="ok"))


@route(
    "GET",
    "/v1/openapi.json",
    success=(200, None, "This API's OpenAPI 3.1 document"),
    problems=(),
    operation_id="openapi",
    summary="The OpenAPI document",
    tag="service",
    public=True,
)
def openapi() -> Response[str]:
    from .openapi import openapi_json

    return Response(200, JSON, openapi_json())


# ================================================================ route helpers


def _principal() -> Principal:
    principal = app.context.get("principal")
    if not isinstance(principal, Principal):
        raise Unauthenticated()
    return principal


def _requests() -> Requests:
    """The requests side of the service, built on the first route that needs it."""
    source: Callable[[], Requests] = app.context["requests"]
    return source()


def _project(vlab: str, project: str) -> ProjectRef:
    return ProjectRef.parse(vlab, project)


def _runs_path(ref: ProjectRef) -> str:
    return f"/v1/virtual-labs/{ref.virtual_lab_id}/projects/{ref.project_id}/runs"
