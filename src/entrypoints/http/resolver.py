"""The REST application's resolver and its route table.

Routes are declared with :func:`route`, which registers them with powertools' resolver (and so
in the OpenAPI document) and in this module's own table, which the checks before routing
(``prepare.py``) read: exactly the documented paths, the methods each allows, whether it is
public, whether it reads a body and which query parameters it knows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler.openapi.params import Query

from .models import PROBLEM_JSON, Problem

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

JSON = "application/json"
#: Largest request body accepted (API Gateway REST caps at 10 MB, a Lambda invoke at 6 MB).
MAX_BODY_BYTES = 1024 * 1024
BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]


class JsonRefused(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise JsonRefused(f"must be JSON: {name} is not a JSON value")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise JsonRefused("must be JSON without repeated keys in an object")
    return result


def strict_json(text: str) -> Any:
    """RFC 8259 JSON only: no NaN or Infinity, no repeated keys."""
    return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)


app = APIGatewayRestResolver(
    enable_validation=True,
    response_validation_error_http_code=500,
    json_body_deserializer=strict_json,
)


@dataclass(frozen=True)
class Operation:
    method: str
    public: bool
    body: bool  # the operation reads a JSON body
    query: frozenset[str]  # the query parameters it knows; any other is refused


ROUTES: list[tuple[re.Pattern[str], dict[str, Operation]]] = []
_F = TypeVar("_F", bound=Callable[..., Any])


def route(
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
            "description": PROBLEM_DESCRIPTIONS[code],
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
        operation = Operation(method, public, body, query_names(func))
        for known, ops in ROUTES:
            if known.pattern == pattern.pattern:
                ops[method] = operation
                break
        else:
            ROUTES.append((pattern, {method: operation}))
        return register(func)

    return record


def query_names(func: Callable[..., Any]) -> frozenset[str]:
    hints = get_type_hints(func, include_extras=True)
    return frozenset(
        meta.alias or name
        for name, hint in hints.items()
        for meta in getattr(hint, "__metadata__", ())
        if isinstance(meta, Query)
    )


PROBLEM_DESCRIPTIONS = {
    401: "No valid bearer token",
    403: "The caller may not do this in the project",
    404: "No such project (for this caller) or run; for provenance, nothing registered yet",
    409: "Conflicts with the run's state or with an earlier use of the Idempotency-Key",
    413: f"The body is larger than {MAX_BODY_BYTES} bytes",
    415: "The body is not application/json (UTF-8)",
    422: "A parameter or the body is not valid, or an unknown query parameter was sent",
    500: "A fault of the service",
    503: "An outside service (the cluster, the orchestrator) is unavailable; retry later",
}


def operations(path: str) -> dict[str, Operation]:
    """The operations at ``path``, by method; empty for a path the API does not have."""
    for pattern, ops in ROUTES:
        if pattern.fullmatch(path):
            return ops
    return {}


def public_path(path: str) -> bool:
    """True when API Gateway puts no authorizer in front of ``path`` (health, the document)."""
    ops = operations(path)
    return bool(ops) and all(op.public for op in ops.values())
