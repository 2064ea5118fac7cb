"""What API Gateway does with a request, on one machine: the proxy event and the authorizer.

- :func:`proxy_event` builds the REST API's payload-1.0 proxy event of a request (a
  ``/{proxy+}`` resource on the gateway's stage);
- :class:`AuthorizerCache` runs the REQUEST authorizer's logic and caches its answer by the
  value of the one ``Authorization`` header (its identity source) for ``ttl`` seconds, reused for
  every method and path, as API Gateway does; ``Unauthorized`` is a 401, a policy that does not
  allow the request a 403, any other failure of the authorizer a 500.

The answers here are the API's deployed gateway responses: RFC 9457 problems that say nothing
about why a token was refused. Nothing here does I/O: the server (``server.py``) feeds it.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from obp_workflow.entrypoints.http import authorization
from obp_workflow.entrypoints.http.models import Problem, problem

if TYPE_CHECKING:
    from obp_workflow.ports.identity import TokenVerifier

log = logging.getLogger("obp_workflow.local_gateway")

API_ID = "local"
REGION = "local"
ACCOUNT = "000000000000"

#: The gateway responses the API is deployed with (UNAUTHORIZED, ACCESS_DENIED, ...).
UNAUTHORIZED = problem(401, "unauthenticated", "Unauthorized", "authentication required")
ACCESS_DENIED = problem(403, "forbidden", "Forbidden", "the caller may not access this resource")
AUTHORIZER_FAILURE = problem(
    500, "internal-error", "Internal server error", "the request could not be authorized"
)
#: Cached grants kept at most; past it, the expired ones are dropped.
_MAX_GRANTS = 10_000


def method_arn(stage: str, method: str, path: str) -> str:
    return f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{stage}/{method}{path}"


def proxy_event(
    *,
    stage: str,
    method: str,
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    protocol: str,
    source_ip: str,
) -> dict[str, Any]:
    """The payload-1.0 proxy event of one request; ``path`` is decoded, ``query`` is not."""
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        multi_headers.setdefault(name, []).append(value)
    multi_query: dict[str, list[str]] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        multi_query.setdefault(name, []).append(value)
    try:
        text: str | None = body.decode("utf-8") if body else None
        encoded = False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode(), True
    method = method.upper()
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "methodArn": method_arn(stage, method, path),
        "headers": {k: v[-1] for k, v in multi_headers.items()},
        "multiValueHeaders": multi_headers,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": API_ID,
            "resourceId": "proxy",
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": path,
            "stage": stage,
            "protocol": protocol,
            "requestId": str(uuid.uuid4()),
            "requestTimeEpoch": int(time.time() * 1000),
            "identity": {"sourceIp": source_ip},
        },
        "body": text,
        "isBase64Encoded": encoded,
    }


def authorizer_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The REQUEST authorizer's event of a proxy event: the same, without the body."""
    answer = {k: v for k, v in event.items() if k not in ("body", "isBase64Encoded")}
    answer["type"] = "REQUEST"
    return answer


@dataclass(frozen=True)
class Grant:
    """A cached authorizer answer."""

    principal_id: str
    statements: tuple[Mapping[str, Any], ...]
    context: Mapping[str, Any]
    expires: float

    def caller(self) -> dict[str, Any]:
        """What lands in ``requestContext.authorizer`` of the API's event."""
        return {"principalId": self.principal_id, **self.context}


class AuthorizerCache:
    """The authorizer's answers by identity source, as API Gateway keeps them."""

    def __init__(
        self,
        verifier: Callable[[], TokenVerifier],
        *,
        ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.verifier = verifier
        self.ttl = ttl
        self.clock = clock
        self.calls = 0
        self._grants: dict[str, Grant] = {}
        self._lock = threading.Lock()

    def authorize(self, event: Mapping[str, Any], identity: str) -> Grant | Problem:
        """The cached or fresh answer for ``identity``, the value of the one Authorization
        header (a request with several never gets here); blocking: the verifier may fetch keys."""
        now = self.clock()
        with self._lock:
            grant = self._grants.get(identity)
        if grant is None or grant.expires <= now:
            with self._lock:
                self.calls += 1
            try:
                answer = authorization.authorize(event, self.verifier())
            except Exception as exc:
                if str(exc) == "Unauthorized":
                    return UNAUTHORIZED
                log.exception("the authorizer failed")
                return AUTHORIZER_FAILURE
            grant = Grant(
                principal_id=str(answer["principalId"]),
                statements=tuple(answer["policyDocument"]["Statement"]),
                context=dict(answer.get("context") or {}),
                expires=now + self.ttl,
            )
            if self.ttl > 0:
                with self._lock:
                    if len(self._grants) >= _MAX_GRANTS:
                        self._grants = {k: g for k, g in self._grants.items() if g.expires > now}
                    self._grants[identity] = grant
        if not allows(grant.statements, event["methodArn"]):
            return ACCESS_DENIED
        return grant


class LambdaContext:
    """The few attributes of a Lambda context that handlers read."""

    function_name = "obp-workflow-api"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:obp-workflow-api"

    def __init__(self, remaining_ms: int = 29_000) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self._remaining_ms


def allows(statements: Iterable[Mapping[str, Any]], arn: str) -> bool:
    """IAM evaluation, as far as API Gateway needs it: an explicit Deny wins over any Allow."""
    allowed = False
    for statement in statements:
        actions = _as_list(statement.get("Action"))
        resources = _as_list(statement.get("Resource"))
        if not any(_glob(a, "execute-api:Invoke") for a in actions):
            continue
        if not any(_glob(r, arn) for r in resources):
            continue
        if statement.get("Effect") == "Deny":
            return False
        if statement.get("Effect") == "Allow":
            allowed = True
    return allowed


def _as_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _glob(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None
