"""The REST API of the Workflow Service: a Lambda behind API Gateway (REST, payload 1.0).

``handler`` is the Lambda entry point. Before powertools' resolver sees a request, the handler
answers what the resolver would get wrong or could not know:

- 413 for a body above :data:`MAX_BODY_BYTES`;
- 404 for an unknown path (exactly the documented ones: no trailing '/', no control
  character), or 405 with ``Allow`` for a known path asked with another method;
- 401 when API Gateway passed no caller (``requestContext.authorizer``) on a protected path;
- 422 for a query parameter the operation does not know (a misspelt filter is not ignored);
- 415 for a body that is not ``application/json`` (UTF-8), 422 for one that is not RFC 8259
  JSON (NaN, repeated keys), then the body is handed on decoded.

The resolver then validates parameters and bodies against the models (422), and the routes call
the application, which checks the caller's rights against the project in the path. Every error
is an RFC 9457 problem (``application/problem+json``) whose ``type`` names the domain error's
stable kind.

The container is built on the first request and kept for the life of the warm environment;
the OpenAPI document is generated on first demand (``GET /v1/openapi.json``, or
``python -m obp_workflow.entrypoints.lambda_api --openapi > docs/openapi.json``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast, get_type_hints
from uuid import UUID

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
    ResponseValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query
from pydantic import StringConstraints

from obp_workflow.core.errors import DomainError, InvalidRequest, Unauthenticated
from obp_workflow.core.identity import Principal, ProjectRef
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState
from obp_workflow.entrypoints.api_models import (
    PROBLEM_JSON,
    CancelRequest,
    FieldProblem,
    Health,
    InstanceView,
    Problem,
    RunLog,
    RunPage,
    RunView,
    instance_view,
    internal_error,
    problem,
    problem_for,
    run_page,
    run_view,
)
from obp_workflow.entrypoints.lambda_authorizer import principal_from_context

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

    from obp_workflow.application.service import WorkflowService
    from obp_workflow.entrypoints.bootstrap import Service

log = logging.getLogger("obp_workflow.api")

API_TITLE = "OBP Workflow Service"
API_VERSION = "1.0.0"
#: Largest request body accepted (API Gateway REST caps at 10 MB, a Lambda invoke at 6 MB).
MAX_BODY_BYTES = 1024 * 1024
JSON = "application/json"
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_STATES = "|".join(s.value for s in RunState)
STATE_FILTER_PATTERN = rf"^({_STATES})(,({_STATES}))*$"


class _JsonRefused(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _JsonRefused(f"must be JSON: {name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise _JsonRefused("must be JSON without repeated keys in an object")
    return result


def _strict_json(text: str) -> Any:
    """RFC 8259 JSON only: no NaN or Infinity, no repeated keys."""
    return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)


app = APIGatewayRestResolver(
    enable_validation=True,
    response_validation_error_http_code=500,
    json_body_deserializer=_strict_json,
)


# ================================================================ the route table


@dataclass(frozen=True)
class _Operation:
    method: str
    public: bool
    body: bool  # the operation reads a JSON body
    query: frozenset[str]  # the query parameters it knows; any other is refused


_ROUTES: list[tuple[re.Pattern[str], dict[str, _Operation]]] = []
_F = TypeVar("_F", bound=Callable[..., Any])


def _route(
    method: str,
    rule: str,
    *,
    success: tuple[int, type[Any] | None, str],
    problems: Sequence[int],
    operation_id: str,
    summary: str,
    tag: str,
    public: bool = False,
    body: bool = False,
    headers: Mapping[str, str] | None = None,
) -> Callable[[_F], _F]:
    """Register a route with the resolver and in the handler's own table (404/405/401/415)."""
    # Exactly the documented paths: '/runs/' is not '/runs/{run}' with an empty id, nor '/runs'.
    pattern = re.compile(re.sub(r"<\w+>", "[^/]+", rule))
    status, model, description = success
    responses: dict[int, OpenAPIResponse] = {
        status: (
            {"description": description, "content": {JSON: {"model": model}}}
            if model is not None
            else {"description": description, "content": {JSON: {"schema": {"type": "object"}}}}
        )
    }
    if headers:
        responses[status]["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    codes = [*problems, 422, 500]  # 422: powertools declares its own shape on every route
    if not public:
        codes += [401, 403]
    for code in sorted(set(codes)):
        responses[code] = {
            "description": _PROBLEM_DESCRIPTIONS[code],
            "content": {PROBLEM_JSON: {"model": Problem}},
        }
    register: Callable[[_F], _F] = app.route(
        rule,
        method,
        status_code=status,
        responses=responses,
        operation_id=operation_id,
        summary=summary,
        tags=[tag],
        security=None if public else BEARER,
    )

    def record(func: _F) -> _F:
        operation = _Operation(method, public, body, _query_names(func))
        for known, ops in _ROUTES:
            if known.pattern == pattern.pattern:
                ops[method] = operation
                break
        else:
            _ROUTES.append((pattern, {method: operation}))
        return register(func)

    return record


def _query_names(func: Callable[..., Any]) -> frozenset[str]:
    hints = get_type_hints(func, include_extras=True)
    return frozenset(
        meta.alias or name
        for name, hint in hints.items()
        for meta in getattr(hint, "__metadata__", ())
        if isinstance(meta, Query)
    )


_PROBLEM_DESCRIPTIONS = {
    401: "No valid bearer token",
    403: "The caller may not do this in the project",
    404: "No such project (for this caller) or run",
    409: "Conflicts with the run's state or with an earlier use of the Idempotency-Key",
    413: f"The body is larger than {MAX_BODY_BYTES} bytes",
    415: "The body is not application/json (UTF-8)",
    422: "A parameter or the body is not valid, or an unknown query parameter was sent",
    500: "A fault of the service",
    503: "An outside service (the cluster, the orchestrator) is unavailable; retry later",
}

# ================================================================ parameters

RUNS = "/v1/virtual-labs/<vlab>/projects/<project>/runs"
VlabId = Annotated[UUID, Path(description="The Virtual Lab's id.")]
ProjectId = Annotated[UUID, Path(description="The project's id, in that Virtual Lab.")]
#: Any other string is a run that does not exist (404), like any unknown id.
RunId = Annotated[str, Path(description="The run's id.", min_length=1, max_length=256)]
StateFilter = Annotated[str, StringConstraints(pattern=STATE_FILTER_PATTERN)]


# ================================================================ the routes


@_route(
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
    run = _service().submit(_principal(), ref, request, idempotency_key)
    location = f"{_runs_path(ref)}/{run.run_id}"
    return Response(202, JSON, run_view(run), headers={"Location": location})


@_route(
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
    page = _service().list_runs(_principal(), ref, states, cursor, limit)
    return Response(200, JSON, run_page(page))


@_route(
    "GET",
    RUNS + "/<run>",
    success=(200, RunView, "The run: state, stale condition, timeline, job, sync, registration"),
    problems=(404, 422, 503),
    operation_id="getRun",
    summary="Read one run",
    tag="runs",
)
def get_run(vlab: VlabId, project: ProjectId, run: RunId) -> Response[RunView]:
    found = _service().get(_principal(), _project(vlab, project), run)
    return Response(200, JSON, run_view(found))


@_route(
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
    cancelled = _service().cancel(_principal(), _project(vlab, project), run, reason)
    return Response(202, JSON, run_view(cancelled))


@_route(
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
    text = _service().log(_principal(), _project(vlab, project), run, max_bytes)
    return Response(200, JSON, RunLog(run_id=run, max_bytes=max_bytes, text=text))


@_route(
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
    info = _service().instance(_principal(), ref)
    return Response(200, JSON, instance_view(ref.virtual_lab_id, ref.project_id, info))


@_route(
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


@_route(
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
    return Response(200, JSON, openapi_json())


# ================================================================ route helpers


def _principal() -> Principal:
    principal = app.context.get("principal")
    if not isinstance(principal, Principal):
        raise Unauthenticated()
    return principal


def _service() -> WorkflowService:
    source: Callable[[], Service] = app.context["container"]
    service: WorkflowService = source().workflow()
    return service


def _project(vlab: UUID, project: UUID) -> ProjectRef:
    return ProjectRef.parse(str(vlab), str(project))


def _runs_path(ref: ProjectRef) -> str:
    return f"/v1/virtual-labs/{ref.virtual_lab_id}/projects/{ref.project_id}/runs"


# ================================================================ errors

_H = TypeVar("_H", bound=Callable[..., "Response[str]"])


def _handles(exc_class: type[Exception]) -> Callable[[_H], _H]:
    """``app.exception_handler``, typed."""
    register: Callable[[_H], _H] = cast(Any, app).exception_handler(exc_class)
    return register


def _problem_response(body: Problem, headers: Mapping[str, str] | None = None) -> Response[str]:
    all_headers = dict(headers or {})
    if body.status == 503:
        all_headers.setdefault("Retry-After", "30")
    return Response(
        body.status, PROBLEM_JSON, body.model_dump_json(exclude_none=True), headers=all_headers
    )


@_handles(DomainError)
def _domain_error(exc: DomainError) -> Response[str]:
    body = problem_for(exc)
    if body.status >= 500 and body.status != 503:
        log.error("unexpected %s: %s", exc.kind, exc.message)
    return _problem_response(body)


@_handles(RequestValidationError)
def _invalid(exc: RequestValidationError) -> Response[str]:
    fields = [
        FieldProblem(field=".".join(str(p) for p in e.get("loc", ())), rule=str(e.get("msg", "")))
        for e in exc.errors()
    ]
    return _problem_response(_invalid_problem(fields))


def _invalid_problem(fields: list[FieldProblem]) -> Problem:
    detail = "invalid request: " + "; ".join(f"{f.field}: {f.rule}" for f in fields)
    return problem(422, InvalidRequest.kind, "Invalid request", detail[:2000], fields)


@_handles(RequestUnsupportedContentType)
def _unsupported(exc: RequestUnsupportedContentType) -> Response[str]:
    return _problem_response(_unsupported_problem())


def _unsupported_problem() -> Problem:
    return problem(
        415,
        "unsupported-media-type",
        "Unsupported media type",
        "send the body as application/json (UTF-8)",
    )


@_handles(ResponseValidationError)
def _bad_response(exc: ResponseValidationError) -> Response[str]:
    errors = [{"loc": e.get("loc"), "type": e.get("type")} for e in exc.errors()]
    log.error("a response does not match its model: %s", errors)
    return _problem_response(internal_error())


@_handles(NotFoundError)
def _no_route(exc: NotFoundError) -> Response[str]:
    event = app.current_event
    _, headers, body = _route_miss(event.http_method.upper(), event.path)
    return _problem_response(body, headers)


@_handles(Exception)
def _bug(exc: Exception) -> Response[str]:
    log.exception("unhandled error")
    return _problem_response(internal_error())


def _route_miss(method: str, path: str) -> tuple[int, dict[str, str], Problem]:
    ops = _operations(path)
    if not ops or method in ops:  # the method is routed, but not with these path values
        return 404, {}, problem(404, "not-found", "Not found", f"no resource at {path[:200]}")
    allow = ", ".join(sorted(ops))
    return (
        405,
        {"Allow": allow},
        problem(405, "method-not-allowed", "Method not allowed", f"{path[:200]} allows {allow}"),
    )


def public_path(path: str) -> bool:
    """True when API Gateway puts no authorizer in front of ``path`` (health, the document)."""
    ops = _operations(path)
    return bool(ops) and all(op.public for op in ops.values())


def _operations(path: str) -> dict[str, _Operation]:
    for pattern, ops in _ROUTES:
        if pattern.fullmatch(path):
            return ops
    return {}


# ================================================================ the handler


class _Environment:
    """What one warm Lambda environment keeps between invocations."""

    def __init__(self) -> None:
        self.container: Service | None = None
        self.build_lock = threading.Lock()
        #: Powertools keeps the current event on the resolver class: one request at a time.
        self.resolve_lock = threading.Lock()
        self.openapi: str | None = None

    def get_container(self) -> Service:
        with self.build_lock:
            if self.container is None:
                from obp_workflow.entrypoints.bootstrap import build
                from obp_workflow.entrypoints.settings import load_settings

                self.container = build(load_settings())
            return self.container


_environment = _Environment()


def use_container(container: Service | None) -> None:
    """Inject the container this environment uses (tests); None to build it from settings."""
    _environment.container = container


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point."""
    return handle(event, context)


def handle(
    event: Mapping[str, Any], context: Any, container: Service | None = None
) -> dict[str, Any]:
    """Answer one API Gateway (REST, payload 1.0) event, with ``container``'s service or the
    warm environment's. The container is looked up only by routes that need the service."""
    try:
        prepared = _prepare(event)
    except _Refused as refused:
        return refused.response
    source: Callable[[], Service] = (
        _environment.get_container if container is None else (lambda: container)
    )
    with _environment.resolve_lock:
        app.context.update(principal=prepared.principal, container=source)
        return app.resolve(prepared.event, context)


@dataclass(frozen=True)
class _Prepared:
    event: Mapping[str, Any]
    principal: Principal | None


class _Refused(Exception):
    def __init__(self, body: Problem, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(body.detail)
        all_headers = {"Content-Type": PROBLEM_JSON, **(headers or {})}
        self.response = {
            "statusCode": body.status,
            "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
            "body": body.model_dump_json(exclude_none=True),
            "isBase64Encoded": False,
        }


def _prepare(event: Mapping[str, Any]) -> _Prepared:
    """Everything the resolver must not see: too large, unrouted, anonymous, not JSON."""
    method = str(event.get("httpMethod") or "").upper()
    path = str(event.get("path") or "/")
    raw = event.get("body")
    body = raw if isinstance(raw, str) else ""
    base64_encoded = bool(event.get("isBase64Encoded")) and bool(body)
    size = len(body) * 3 // 4 if base64_encoded else len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise _Refused(
            problem(
                413,
                "payload-too-large",
                "Payload too large",
                f"the body must be at most {MAX_BODY_BYTES} bytes",
            )
        )
    # No resource has a control character in its path; and powertools' route patterns end in
    # '$', which also matches before a final newline ('/runs/\n' would list the runs).
    ops = {} if _CONTROL.search(path) else _operations(path)
    op = ops.get(method)
    if op is None:
        _, headers, miss = _route_miss(method, path)
        raise _Refused(miss, headers)
    principal = None
    if not op.public:
        context = event.get("requestContext")
        authorizer = context.get("authorizer") if isinstance(context, Mapping) else None
        principal = principal_from_context(authorizer)
        if principal is None:
            raise _Refused(problem_for(Unauthenticated()))
    query = event.get("multiValueQueryStringParameters") or event.get("queryStringParameters")
    unknown = sorted(set(query) - op.query) if isinstance(query, Mapping) else []
    if unknown:
        # A misspelt filter must not quietly answer as if there were none.
        rule = "is not a parameter of this operation"
        fields = [FieldProblem(field=f"query.{name[:100]}", rule=rule) for name in unknown[:20]]
        raise _Refused(_invalid_problem(fields))
    if not op.body or not body:
        return _Prepared(_without_body(event) if not op.body else event, principal)
    if not _is_json(_header(event, "content-type")):
        raise _Refused(_unsupported_problem())
    try:
        data = base64.b64decode(body, validate=True) if base64_encoded else body.encode("utf-8")
        text = data.decode("utf-8")
        _strict_json(text)
    except (binascii.Error, ValueError, RecursionError) as exc:
        rule = "must be a JSON document in UTF-8"
        if isinstance(exc, _JsonRefused):
            rule = str(exc)
        raise _Refused(_invalid_problem([FieldProblem(field="body", rule=rule)])) from None
    return _Prepared(_with_json_body(event, text), principal)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _header(event: Mapping[str, Any], name: str) -> str | None:
    for key in ("multiValueHeaders", "headers"):
        headers = event.get(key)
        if isinstance(headers, Mapping):
            for k, v in headers.items():
                if isinstance(k, str) and k.lower() == name:
                    value = v[-1] if isinstance(v, list) and v else v
                    return value if isinstance(value, str) else None
    return None


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media, *params = content_type.split(";")
    if media.strip().lower() != JSON:
        return False
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def _with_json_body(event: Mapping[str, Any], text: str) -> dict[str, Any]:
    """The event with a decoded body and one plain ``Content-Type: application/json``."""
    prepared = dict(event)
    prepared["body"] = text
    prepared["isBase64Encoded"] = False
    for key in ("headers", "multiValueHeaders"):
        headers = event.get(key)
        if isinstance(headers, Mapping):
            kept = {k: v for k, v in headers.items() if str(k).lower() != "content-type"}
            kept["Content-Type"] = [JSON] if key == "multiValueHeaders" else JSON
            prepared[key] = kept
    return prepared


def _without_body(event: Mapping[str, Any]) -> dict[str, Any]:
    prepared = dict(event)
    prepared["body"] = None
    prepared["isBase64Encoded"] = False
    return prepared


# ================================================================ the OpenAPI document


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document, as committed in ``docs/openapi.json``."""
    result: dict[str, Any] = json.loads(openapi_json())
    return result


def openapi_json() -> str:
    """The OpenAPI document as text; generated once per warm environment, on first demand."""
    if _environment.openapi is None:
        _environment.openapi = _generate_openapi()
    return _environment.openapi


def _generate_openapi() -> str:
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

    doc: dict[str, Any] = json.loads(
        app.get_openapi_json_schema(
            title=API_TITLE,
            version=API_VERSION,
            description=(
                "Runs simulations on each Virtual Lab project's HPC cluster and registers their "
                "results in the knowledge graph. Errors are RFC 9457 problems whose `type` is "
                "stable per kind of error."
            ),
            security_schemes={"bearerAuth": HTTPBearer(bearerFormat="JWT")},
        )
    )
    # Powertools declares its own 500 (response validation) on every operation: ours is a
    # Problem like every other error.
    schemas = doc.get("components", {}).get("schemas", {})
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            operation["responses"]["500"] = {
                "description": _PROBLEM_DESCRIPTIONS[500],
                "content": {PROBLEM_JSON: {"schema": problem_ref}},
            }
    # ... and its validation error shapes, replaced by Problem, go when nothing refers to them.
    for unused in ("ResponseValidationError", "HTTPValidationError", "ValidationError"):
        others = {k: v for k, v in schemas.items() if k != unused}
        text = json.dumps([doc.get("paths"), others])
        if f'"#/components/schemas/{unused}"' not in text:
            schemas.pop(unused, None)
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--openapi"]:
        sys.stdout.write(openapi_json())
        return 0
    sys.stderr.write(
        "usage: python -m obp_workflow.entrypoints.lambda_api --openapi > docs/openapi.json\n"
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
