"""The local gateway as an ASGI application: one request in, API Gateway's handling of it out.

Per request, in order: the head's limits (HTTP/1.0 or 1.1, else 505; the request line, 414;
the header fields' count and size, 431; a body framed both ways, 400; a declared length above
the cap, 413); the body, counted while it streams in (413 as soon as it passes the cap, 408 on
a long pause); then what API Gateway does:

- a path of ``extra_routes`` is answered with its fixed JSON document for GET and HEAD, with no
  authorization (405 for any other method);
- a public path (``http.api.public_path``) goes straight to the API handler;
- any other needs exactly one ``Authorization`` header (none, or several, is a 401 before any
  cache is consulted), then the authorizer's cached or fresh answer (``events.py``);
- the API handler, synchronous, runs on the gateway's thread pool; a handler that raises is a
  502, one that does not answer within API Gateway's integration timeout a 504.

Every answer of the gateway itself is an RFC 9457 problem; an answer that refuses a request
before its body was read closes the connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar

from obp_workflow.entrypoints.http import api
from obp_workflow.entrypoints.http.models import Problem, problem

from . import events
from .limits import (
    AMBIGUOUS_LENGTH,
    BAD_GATEWAY,
    GATEWAY_TIMEOUT,
    HEADERS_TOO_LARGE,
    REQUEST_TIMEOUT,
    URI_TOO_LONG,
    VERSION_NOT_SUPPORTED,
    ServerLimits,
    encoded,
    too_large,
)

if TYPE_CHECKING:
    from obp_workflow.entrypoints.composition.root import Service

log = logging.getLogger("obp_workflow.local_gateway")

T = TypeVar("T")
Scope = Mapping[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Mapping[str, Any]], Any]
#: A fixed document served on a public path: its status and JSON body.
ExtraRoute = Callable[[], tuple[int, Mapping[str, Any]]]

_DROPPED_RESPONSE_HEADERS = frozenset({"content-length", "connection", "transfer-encoding"})


class _Disconnected(Exception):
    """The client went away before its body was read."""


class _TooSlow(Exception):
    """A handler did not answer within the integration timeout."""


class GatewayApp:
    """API Gateway in front of the API Lambda and its authorizer, for one container."""

    def __init__(
        self,
        container: Service,
        authorizer: events.AuthorizerCache,
        executor: Executor,
        *,
        stage: str,
        limits: ServerLimits,
        extra_routes: Mapping[str, ExtraRoute] | None = None,
    ) -> None:
        self.container = container
        self.authorizer = authorizer
        self.executor = executor
        self.stage = stage
        self.limits = limits
        self.extra_routes = dict(extra_routes or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        refusal = self._check_head(scope)
        if refusal is not None:
            await _answer_problem(send, refusal, close=True)
            return
        try:
            body = await self._read_body(receive)
        except _Disconnected:
            return
        if isinstance(body, Problem):
            await _answer_problem(send, body, close=True)
            return
        path = scope["path"] or "/"
        if path in self.extra_routes:
            await self._extra(scope["method"], self.extra_routes[path], send)
            return
        status, headers, data = await self._through_gateway(scope, path, body)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    # ------------------------------------------------------------ the head and the body

    def _check_head(self, scope: Scope) -> Problem | None:
        limits = self.limits
        if scope["http_version"] not in ("1.0", "1.1"):
            return VERSION_NOT_SUPPORTED
        query = scope["query_string"]
        target = len(scope["raw_path"]) + (len(query) + 1 if query else 0)
        line = len(scope["method"]) + 1 + target + len(" HTTP/1.1")
        if line > limits.max_request_line_bytes:
            return URI_TOO_LONG
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if len(headers) > limits.max_headers:
            return HEADERS_TOO_LARGE
        # h11 bounds a head that arrives in parts; one that arrives whole is measured here.
        if line + sum(len(k) + len(v) + 4 for k, v in headers) > limits.max_head_bytes:
            return HEADERS_TOO_LARGE
        lengths = [v for k, v in headers if k == b"content-length"]
        if lengths and any(k == b"transfer-encoding" for k, _ in headers):
            return AMBIGUOUS_LENGTH
        if lengths and int(lengths[0]) > limits.max_body_bytes:  # h11 checked the digits
            return too_large(limits)
        return None

    async def _read_body(self, receive: Receive) -> bytes | Problem:
        """The whole body, or the problem that stopped reading it."""
        cap = self.limits.max_body_bytes
        parts: list[bytes] = []
        total = 0
        while True:
            try:
                async with asyncio.timeout(self.limits.body_timeout_seconds):
                    message = await receive()
            except TimeoutError:
                return REQUEST_TIMEOUT
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk: bytes = message.get("body", b"")
            total += len(chunk)
            if total > cap:
                return too_large(self.limits)
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    # ------------------------------------------------------------ fixed documents

    async def _extra(self, method: str, route: ExtraRoute, send: Send) -> None:
        if method not in ("GET", "HEAD"):
            refusal = problem(
                405, "method-not-allowed", "Method not allowed", "this path allows GET, HEAD"
            )
            await _answer_problem(send, refusal, extra=[(b"allow", b"GET, HEAD")])
            return
        try:
            status, document = await self._in_thread(route)
            data = json.dumps(document).encode()
        except Exception:
            log.exception("a fixed document could not be built")
            await _answer_problem(send, BAD_GATEWAY)
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    # ------------------------------------------------------------ API Gateway

    async def _through_gateway(
        self, scope: Scope, path: str, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        client = scope.get("client") or ("", 0)
        event = events.proxy_event(
            stage=self.stage,
            method=scope["method"],
            path=path,
            query=scope["query_string"].decode("latin-1"),
            headers=headers,
            body=body,
            protocol=f"HTTP/{scope['http_version']}",
            source_ip=str(client[0]),
        )
        if not api.public_path(path):
            identities = [v for k, v in headers if k == "authorization"]
            if len(identities) != 1 or not identities[0]:
                return _problem_answer(events.UNAUTHORIZED)
            try:
                grant = await self._in_thread(
                    self.authorizer.authorize, events.authorizer_event(event), identities[0]
                )
            except _TooSlow:
                log.error("the authorizer did not answer in time")
                return _problem_answer(events.AUTHORIZER_FAILURE)
            if isinstance(grant, Problem):
                return _problem_answer(grant)
            event["requestContext"]["authorizer"] = grant.caller()
        timeout_ms = int(self.limits.handler_timeout_seconds * 1000)
        try:
            response = await self._in_thread(
                api.handle, event, events.LambdaContext(timeout_ms), self.container.requests
            )
        except _TooSlow:
            log.error("the API handler did not answer in time")
            return _problem_answer(GATEWAY_TIMEOUT)
        except Exception:
            log.exception("the API handler raised")
            return _problem_answer(BAD_GATEWAY)
        return _lambda_answer(response)

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the thread pool; :class:`_TooSlow` past the integration timeout
        (the thread runs on: it cannot be stopped)."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, fn, *args)
        done, _ = await asyncio.wait({future}, timeout=self.limits.handler_timeout_seconds)
        if not done:
            future.cancel()
            raise _TooSlow
        return future.result()


def _lambda_answer(response: Mapping[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A Lambda proxy response as HTTP; one that is not a valid response is a 502."""
    try:
        status = int(response.get("statusCode", 502))
        if not 100 <= status <= 599:
            raise ValueError(f"status {status}")
        values: dict[str, list[str]] = {}
        for name, value in (response.get("headers") or {}).items():
            values[str(name)] = [str(value)]
        for name, many in (response.get("multiValueHeaders") or {}).items():
            values[str(name)] = [str(v) for v in many]
        raw = response.get("body") or ""
        data = base64.b64decode(raw) if response.get("isBase64Encoded") else str(raw).encode()
        headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, vs in values.items()
            if name.lower() not in _DROPPED_RESPONSE_HEADERS
            for value in vs
        ]
    except (ValueError, TypeError, AttributeError, UnicodeEncodeError) as exc:
        log.error("the API handler answered with an invalid response: %s", exc)
        return _problem_answer(BAD_GATEWAY)
    headers.append((b"content-length", b"%d" % len(data)))
    return status, headers, data


def _problem_answer(body: Problem) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers, data = encoded(body)
    return body.status, headers, data


async def _answer_problem(
    send: Send,
    body: Problem,
    *,
    close: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers, data = encoded(body)
    headers += extra or []
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": body.status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
