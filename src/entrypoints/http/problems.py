"""Every error of the API as an RFC 9457 problem (``application/problem+json``).

A domain error becomes the problem of its stable kind (``models.problem_for``); powertools'
validation errors a 422 naming each field; a path the API does not have a 404, a known path
asked with another method a 405 with ``Allow``; anything unexpected a 500 that says nothing
more (and is logged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
    ResponseValidationError,
)

from obp_workflow.core.errors import DomainError, InvalidRequest

from .models import PROBLEM_JSON, FieldProblem, Problem, internal_error, problem, problem_for
from .resolver import app, operations

log = logging.getLogger("obp_workflow.api")

_H = TypeVar("_H", bound=Callable[..., "Response[str]"])


def _handles(exc_class: type[Exception]) -> Callable[[_H], _H]:
    """``app.exception_handler``, typed."""
    register: Callable[[_H], _H] = cast(Any, app).exception_handler(exc_class)
    return register


def problem_response(body: Problem, headers: Mapping[str, str] | None = None) -> Response[str]:
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
    return problem_response(body)


@_handles(RequestValidationError)
def _invalid(exc: RequestValidationError) -> Response[str]:
    fields = [
        FieldProblem(field=".".join(str(p) for p in e.get("loc", ())), rule=str(e.get("msg", "")))
        for e in exc.errors()
    ]
    return problem_response(invalid_problem(fields))


def invalid_problem(fields: list[FieldProblem]) -> Problem:
    detail = "invalid request: " + "; ".join(f"{f.field}: {f.rule}" for f in fields)
    return problem(422, InvalidRequest.kind, "Invalid request", detail[:2000], fields)


@_handles(RequestUnsupportedContentType)
def _unsupported(exc: RequestUnsupportedContentType) -> Response[str]:
    return problem_response(unsupported_problem())


def unsupported_problem() -> Problem:
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
    return problem_response(internal_error())


@_handles(NotFoundError)
def _no_route(exc: NotFoundError) -> Response[str]:
    event = app.current_event
    _, headers, body = route_miss(event.http_method.upper(), event.path)
    return problem_response(body, headers)


@_handles(Exception)
def _bug(exc: Exception) -> Response[str]:
    log.exception("unhandled error")
    return problem_response(internal_error())


def route_miss(method: str, path: str) -> tuple[int, dict[str, str], Problem]:
    ops = operations(path)
    if not ops or method in ops:  # the method is routed, but not with these path values
        return 404, {}, problem(404, "not-found", "Not found", f"no resource at {path[:200]}")
    allow = ", ".join(sorted(ops))
    return (
        405,
        {"Allow": allow},
        problem(405, "method-not-allowed", "Method not allowed", f"{path[:200]} allows {allow}"),
    )
