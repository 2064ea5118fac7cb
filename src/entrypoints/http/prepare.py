"""The checks before routing: what the resolver would get wrong or could not know.

- 413 for a body above ``MAX_BODY_BYTES``;
- 404 for an unknown path (exactly the documented ones: no trailing '/', no control
  character), or 405 with ``Allow`` for a known path asked with another method;
- 401 when API Gateway passed no caller (``requestContext.authorizer``) on a protected path;
- 422 for a query parameter the operation does not know (a misspelt filter is not ignored);
- 415 for a body that is not ``application/json`` (UTF-8), 422 for one that is not RFC 8259
  JSON (NaN, repeated keys); then the body is handed on decoded.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from obp_workflow.core.errors import Unauthenticated
from obp_workflow.core.identity import Principal

from .authorization import principal_from_context
from .models import PROBLEM_JSON, FieldProblem, Problem, problem, problem_for
from .problems import invalid_problem, route_miss, unsupported_problem
from .resolver import JSON, MAX_BODY_BYTES, JsonRefused, operations, strict_json


@dataclass(frozen=True)
class Prepared:
    event: Mapping[str, Any]
    principal: Principal | None


class Refused(Exception):
    def __init__(self, body: Problem, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(body.detail)
        all_headers = {"Content-Type": PROBLEM_JSON, **(headers or {})}
        self.response = {
            "statusCode": body.status,
            "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
            "body": body.model_dump_json(exclude_none=True),
            "isBase64Encoded": False,
        }


def prepare(event: Mapping[str, Any]) -> Prepared:
    """Everything the resolver must not see: too large, unrouted, anonymous, not JSON."""
    method = str(event.get("httpMethod") or "").upper()
    path = str(event.get("path") or "/")
    raw = event.get("body")
    body = raw if isinstance(raw, str) else ""
    base64_encoded = bool(event.get("isBase64Encoded")) and bool(body)
    size = len(body) * 3 // 4 if base64_encoded else len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise Refused(
            problem(
                413,
                "payload-too-large",
                "Payload too large",
                f"the body must be at most {MAX_BODY_BYTES} bytes",
            )
        )
    # No resource has a control character in its path; and powertools' route patterns end in
    # '$', which also matches before a final newline ('/runs/\n' would list the runs).
    ops = {} if _CONTROL.search(path) else operations(path)
    op = ops.get(method)
    if op is None:
        _, headers, miss = route_miss(method, path)
        raise Refused(miss, headers)
    principal = None
    if not op.public:
        context = event.get("requestContext")
        authorizer = context.get("authorizer") if isinstance(context, Mapping) else None
        principal = principal_from_context(authorizer)
        if principal is None:
            raise Refused(problem_for(Unauthenticated()))
    query = event.get("multiValueQueryStringParameters") or event.get("queryStringParameters")
    unknown = sorted(set(query) - op.query) if isinstance(query, Mapping) else []
    if unknown:
        # A misspelt filter must not quietly answer as if there were none.
        rule = "is not a parameter of this operation"
        fields = [FieldProblem(field=f"query.{name[:100]}", rule=rule) for name in unknown[:20]]
        raise Refused(invalid_problem(fields))
    if not op.body or not body:
        return Prepared(_without_body(event) if not op.body else event, principal)
    if not _is_json(_header(event, "content-type")):
        raise Refused(unsupported_problem())
    try:
        data = base64.b64decode(body, validate=True) if base64_encoded else body.encode("utf-8")
        text = data.decode("utf-8")
        strict_json(text)
    except (binascii.Error, ValueError, RecursionError) as exc:
        rule = "must be a JSON document in UTF-8"
        if isinstance(exc, JsonRefused):
            rule = str(exc)
        raise Refused(invalid_problem([FieldProblem(field="body", rule=rule)])) from None
    return Prepared(_with_json_body(event, text), principal)


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
