"""The local gateway's limits, and the problems it answers with when a request passes one.

Every answer of the server itself (a malformed request, a too long request line, too large
headers, a too large body, a timeout, too many requests) is an RFC 9457 problem document, as
the API's own answers are.
"""

from __future__ import annotations

from dataclasses import dataclass

from obp_workflow.entrypoints.http.models import PROBLEM_JSON, Problem, problem

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """What one request and the server as a whole may take."""

    #: API Gateway REST refuses larger payloads before any Lambda runs (413); counted while
    #: the body streams in, chunked or not.
    max_body_bytes: int = 10 * MIB
    #: The request line, ``METHOD target HTTP/1.1`` (414 beyond): a valid listing's query
    #: (a cursor of 2048 characters, percent-encoded) takes up to 24 KiB.
    max_request_line_bytes: int = 64 * 1024
    #: The whole head: request line and header fields (431 beyond).
    max_head_bytes: int = 128 * 1024
    #: Header fields in one request (431 beyond).
    max_headers: int = 100
    #: From the connection's start, or the end of its previous answer, to a complete head (408).
    head_timeout_seconds: float = 10.0
    #: The longest pause between two parts of a body (408).
    body_timeout_seconds: float = 15.0
    #: An idle keep-alive connection is closed after this long.
    keep_alive_seconds: int = 5
    #: API Gateway's integration timeout: the authorizer or the API Lambda answering later is a
    #: 500 (authorizer) or a 504 (API).
    handler_timeout_seconds: float = 29.0
    #: Open connections; a request on a connection beyond them is a 503.
    max_connections: int = 200
    #: Requests in progress (reading, waiting for a thread, in a handler); beyond them a 503.
    max_requests: int = 64
    #: Threads running the authorizer and the API handler (both synchronous); requests beyond
    #: them wait for one.
    handler_threads: int = 8
    #: Connections the kernel queues before the server accepts them.
    backlog: int = 128
    #: On stop, requests in progress get this long to finish.
    graceful_shutdown_seconds: int = 5


DEFAULT_LIMITS = ServerLimits()

BAD_REQUEST = problem(400, "bad-request", "Bad request", "the request is not valid HTTP/1.1")
AMBIGUOUS_LENGTH = problem(
    400,
    "bad-request",
    "Bad request",
    "a request may not carry both Content-Length and Transfer-Encoding",
)
REQUEST_TIMEOUT = problem(
    408, "request-timeout", "Request timeout", "the request did not arrive in time"
)
REQUEST_TOO_LARGE = problem(
    413, "payload-too-large", "Payload too large", "the body must be at most 10 MB"
)
URI_TOO_LONG = problem(414, "uri-too-long", "URI too long", "the request line is too long")
HEADERS_TOO_LARGE = problem(
    431,
    "request-header-fields-too-large",
    "Request header fields too large",
    "the request has too many or too large header fields",
)
NOT_IMPLEMENTED = problem(
    501, "not-implemented", "Not implemented", "only the chunked transfer coding is supported"
)
BAD_GATEWAY = problem(
    502, "bad-gateway", "Bad gateway", "the API failed to answer this request; it has been logged"
)
SERVICE_UNAVAILABLE = problem(
    503, "service-unavailable", "Service unavailable", "too many requests at once; retry later"
)
GATEWAY_TIMEOUT = problem(
    504, "gateway-timeout", "Gateway timeout", "the API did not answer in time"
)

VERSION_NOT_SUPPORTED = problem(
    505, "http-version-not-supported", "HTTP version not supported", "speak HTTP/1.1 or HTTP/1.0"
)


def too_large(limits: ServerLimits) -> Problem:
    if limits.max_body_bytes == DEFAULT_LIMITS.max_body_bytes:
        return REQUEST_TOO_LARGE
    return problem(
        413,
        "payload-too-large",
        "Payload too large",
        f"the body must be at most {limits.max_body_bytes} bytes",
    )


def encoded(body: Problem) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of an answer with this problem; the connection is kept."""
    data = body.model_dump_json(exclude_none=True).encode()
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(data)).encode()),
    ]
    return headers, data
