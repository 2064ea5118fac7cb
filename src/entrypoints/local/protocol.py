"""uvicorn's HTTP/1.1 protocol (h11), with the local gateway's own answers as problems.

uvicorn answers what h11 cannot parse with a plain-text 400 and too many requests with a
plain-text 503, and has no deadline for a request head. :class:`ProblemH11Protocol` keeps its
parsing and flow control and changes only that:

- a request h11 refuses is answered with the problem of h11's status hint: 400 (malformed: a bad
  ``Content-Length``, a bad chunk size, a missing ``Host``), 501 (a transfer coding other than
  chunked), 431 (the head is larger than ``max_head_bytes``) or 414 (of that head, the request
  line alone is too long), then the connection is closed: nothing after the error is ever
  parsed as a request;
- a request beyond ``max_connections`` or ``max_requests`` is a 503 problem;
- a head not complete ``head_timeout_seconds`` after the connection opened or its previous
  answer was sent is a 408 problem.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from typing import Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol
from uvicorn.server import ServerState

from obp_workflow.entrypoints.http.models import Problem

from .limits import (
    BAD_REQUEST,
    DEFAULT_LIMITS,
    HEADERS_TOO_LARGE,
    NOT_IMPLEMENTED,
    REQUEST_TIMEOUT,
    SERVICE_UNAVAILABLE,
    URI_TOO_LONG,
    ServerLimits,
    encoded,
)

log = logging.getLogger("obp_workflow.local_gateway")

#: The answer to a request h11 refused, by h11's status hint.
_REFUSALS = {400: BAD_REQUEST, 431: HEADERS_TOO_LARGE, 501: NOT_IMPLEMENTED}


class ProblemH11Protocol(H11Protocol):
    """One connection; :func:`protocol_for` gives the class of a gateway's limits."""

    limits: ClassVar[ServerLimits] = DEFAULT_LIMITS

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._api = self.app
        self.app = self._within_limits  # each request goes through the check below
        self.limit_concurrency = None
        self._head_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ concurrency

    async def _within_limits(self, scope: Any, receive: Any, send: Any) -> None:
        # This request's task and connection are counted already.
        limits = self.limits
        if len(self.connections) > limits.max_connections or len(self.tasks) > limits.max_requests:
            log.warning("too many requests at once: answered 503")
            headers, data = encoded(SERVICE_UNAVAILABLE)
            headers += [(b"retry-after", b"1"), (b"connection", b"close")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": data})
            return
        await self._api(scope, receive, send)

    # ------------------------------------------------------------ head deadline

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # h11 writes a response's head and body separately: without TCP_NODELAY the body
        # waits for the client's delayed ACK of the head (40 ms on Linux) on every request.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(
            self.limits.head_timeout_seconds, self._head_timed_out
        )

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        log.info("a request head did not arrive in time: answered 408")
        self._refuse(REQUEST_TIMEOUT)

    # ------------------------------------------------------------ malformed requests

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this while it handles the h11 error of a request it cannot parse."""
        error = sys.exc_info()[1]
        status = getattr(error, "error_status_hint", 400)
        answer = _REFUSALS.get(status, BAD_REQUEST)
        if status == 431 and self._request_line_too_long():
            answer = URI_TOO_LONG
        self._refuse(answer)

    def _request_line_too_long(self) -> bool:
        pending, _ = self.conn.trailing_data
        pending = pending.lstrip(b"\r\n")
        end = pending.find(b"\n")
        return end == -1 or end > self.limits.max_request_line_bytes

    def _refuse(self, body: Problem) -> None:
        """Answer with this problem, if no answer has started, and close the connection."""
        self._disarm_head_timer()
        cycle = self.cycle
        started = cycle is not None and cycle.response_started and not cycle.response_complete
        if started or self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.close()
            return
        headers, data = encoded(body)
        headers = [*self.server_state.default_headers, *headers, (b"connection", b"close")]
        reason = STATUS_PHRASES[body.status]
        output = self.conn.send(
            h11.Response(status_code=body.status, headers=headers, reason=reason)
        )
        output += self.conn.send(h11.Data(data=data)) or b""
        output += self.conn.send(h11.EndOfMessage()) or b""
        self.transport.write(output or b"")
        if self.cycle is not None:
            # The application reading this request's body sees it end: the answer is given.
            self.cycle.response_started = self.cycle.response_complete = True
        self.transport.close()


def protocol_for(limits: ServerLimits) -> type[ProblemH11Protocol]:
    """The protocol class of a server with these limits."""
    return type("ProblemH11Protocol", (ProblemH11Protocol,), {"limits": limits})
