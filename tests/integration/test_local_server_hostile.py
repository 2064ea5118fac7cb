"""Hostile HTTP against the local gateway's server: raw bytes over real sockets.

Each case is a request that the gateway once mishandled (no answer and a traceback, a body read
past the 10 MB cap, a body parsed as a second request, a repeated Authorization header let
through, an HTML error page) or one of its limits. Every answer must be an RFC 9457 problem,
and a refused request must never leave anything on its connection parsed as a request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from obp_workflow.adapters.fake.token_verifier import FakeTokenVerifier
from obp_workflow.core.identity import Principal, parse_groups
from obp_workflow.entrypoints.composition.root import build
from obp_workflow.entrypoints.composition.settings import load_settings
from obp_workflow.entrypoints.http.models import PROBLEM_JSON, PROBLEM_TYPE_BASE
from obp_workflow.entrypoints.local.gateway import LocalGateway, ServerLimits, make_server

MIB = 1024 * 1024
CAP = 10 * MIB
DISCOVERY = "/realms/obp/.well-known/openid-configuration"
LIMITS = ServerLimits(head_timeout_seconds=1.0, body_timeout_seconds=1.0, keep_alive_seconds=1)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self, status: int, kind: str) -> dict[str, object]:
        assert self.status == status, (self.status, self.body[:200])
        assert self.headers["content-type"] == PROBLEM_JSON
        document: dict[str, object] = json.loads(self.body)
        assert document["type"] == PROBLEM_TYPE_BASE + kind
        assert document["status"] == status
        assert document["title"]
        assert document["detail"]
        return document


@dataclass
class Server:
    gateway: LocalGateway
    verifier: FakeTokenVerifier

    def token(self) -> str:
        token = "t-" + uuid.uuid4().hex
        groups = parse_groups([f"/proj/{uuid.uuid4()}/{uuid.uuid4()}/member"])
        self.verifier.issue(token, Principal("ada-" + token[-8:], "ada", groups))
        return token

    def connect(self) -> socket.socket:
        return socket.create_connection(self.gateway.server_address, timeout=10)

    def exchange(self, data: bytes) -> tuple[list[Answer], bool]:
        """Send ``data`` on a new connection; every answer, and whether the server closed."""
        with self.connect() as sock:
            with contextlib.suppress(OSError):  # refused before it was all read
                sock.sendall(data)
            return read_answers(sock)


def read_answers(sock: socket.socket, wait: float = 3.0) -> tuple[list[Answer], bool]:
    """The answers on ``sock`` until the server closes it or ``wait`` seconds of silence."""
    sock.settimeout(wait)
    raw = b""
    closed = False
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            closed = True
            break
        if not data:
            closed = True
            break
        raw += data
    answers = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        answers.append(Answer(int(lines[0].split(" ")[1]), headers, rest[:length]))
        raw = rest[length:]
    return answers, closed


def only_answer(answers: list[Answer], closed: bool) -> Answer:
    """The one answer of a refused request, on a connection the server closed."""
    assert len(answers) == 1, [(a.status, a.body[:100]) for a in answers]
    assert closed, "the server kept the connection of a refused request open"
    assert answers[0].headers.get("connection") == "close"
    return answers[0]


def discovery() -> tuple[int, dict[str, object]]:
    return 200, {"issuer": "http://127.0.0.1/realms/obp"}


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    verifier = FakeTokenVerifier()
    container = build(load_settings(), token_verifier=verifier)
    gateway = make_server(
        "127.0.0.1", 0, container, limits=LIMITS, extra_routes={DISCOVERY: discovery}
    )
    with gateway.start():
        yield Server(gateway, verifier)


@pytest.fixture(autouse=True)
def no_traceback(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.WARNING)
    yield
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []


def healthy(server: Server) -> None:
    assert httpx.get(f"{server.gateway.url}/v1/healthz", timeout=5).status_code == 200


# ================================================================ chunked bodies


def test_a_chunk_size_that_is_not_hex_is_a_400_problem(server: Server) -> None:
    request = b"POST /v1/healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"

    only_answer(*server.exchange(request)).problem(400, "bad-request")
    healthy(server)


def test_a_negative_chunk_size_is_a_400_problem_and_nothing_more_is_read(server: Server) -> None:
    request = b"POST /v1/healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n"

    with server.connect() as sock:
        sock.sendall(request)
        answers, closed = read_answers(sock)
        only_answer(answers, closed).problem(400, "bad-request")
        sent = 0
        with contextlib.suppress(OSError):  # the server closed: 60 MiB cannot go in
            for _ in range(60):
                sock.sendall(b"x" * MIB)
                sent += MIB
                time.sleep(0.01)
        assert sent < 60 * MIB


def _stream_until_refused(server: Server, head: bytes, body: Iterator[bytes]) -> tuple[int, Answer]:
    """Send ``head`` then ``body`` until the server stops taking it; bytes sent, the answer."""
    sent = 0
    with server.connect() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        sock.sendall(head)
        try:
            for part in body:
                sock.sendall(part)
                sent += len(part)
        except OSError:
            pass
        answers, closed = read_answers(sock)
    return sent, only_answer(answers, closed)


def test_a_chunked_body_past_the_cap_is_stopped_with_a_413(server: Server) -> None:
    head = b"POST /v1/healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"100000\r\n" + b"x" * MIB + b"\r\n"

    sent, answer = _stream_until_refused(server, head, iter([chunk] * 60))

    answer.problem(413, "payload-too-large")
    assert sent < 2 * CAP, f"{sent / MIB:.0f} MiB went in before the server stopped reading"
    healthy(server)


def test_a_client_streaming_60_mib_gets_the_413(server: Server) -> None:
    def sixty_mib() -> Iterator[bytes]:
        for _ in range(60):
            yield b"x" * MIB

    answer = httpx.post(f"{server.gateway.url}/v1/healthz", content=sixty_mib(), timeout=30)

    assert answer.status_code == 413
    assert answer.headers["content-type"] == PROBLEM_JSON


def test_one_huge_chunk_is_stopped_at_the_cap(server: Server) -> None:
    head = b"POST /v1/healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

    sent, answer = _stream_until_refused(
        server, head + b"ffffffffffff\r\n", iter([b"x" * MIB] * 60)
    )

    answer.problem(413, "payload-too-large")
    assert sent < 2 * CAP


def test_a_declared_length_past_the_cap_is_refused_before_any_body(server: Server) -> None:
    head = b"POST /v1/healthz HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (CAP + 1)

    only_answer(*server.exchange(head)).problem(413, "payload-too-large")


def test_a_body_at_the_cap_is_read_whole(server: Server) -> None:
    url = server.gateway.url + DISCOVERY

    at_cap = httpx.post(url, content=b"x" * CAP, timeout=30)
    past_it = httpx.post(url, content=iter([b"x" * CAP, b"x"]), timeout=30)  # chunked

    assert at_cap.status_code == 405  # read, then refused for its method
    assert past_it.status_code == 413
    assert past_it.json()["detail"] == "the body must be at most 10 MB"


# ================================================================ framing: no smuggling


SMUGGLED = b"GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: abc\r\n",
        b"Content-Length: 4a\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 3\r\nContent-Length: 44\r\n",
        b"Content-Length: 44\r\nTransfer-Encoding: chunked\r\n",
    ],
    ids=["letters", "hex", "negative", "two-lengths", "length-and-chunked"],
)
def test_an_unclear_body_length_is_refused_and_the_body_never_parsed(
    server: Server, framing: bytes
) -> None:
    request = b"POST /v1/healthz HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n" + SMUGGLED

    only_answer(*server.exchange(request)).problem(400, "bad-request")


def test_a_transfer_coding_other_than_chunked_is_a_501_problem(server: Server) -> None:
    request = b"POST /v1/healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n" + SMUGGLED

    only_answer(*server.exchange(request)).problem(501, "not-implemented")


# ================================================================ Authorization


def _runs(server: Server) -> str:
    return f"{server.gateway.url}/v1/virtual-labs/{uuid.uuid4()}/projects/{uuid.uuid4()}/runs"


@pytest.mark.parametrize("order", ["valid-first", "junk-first"])
def test_a_repeated_authorization_header_is_refused_before_the_cache(
    server: Server, order: str
) -> None:
    valid = f"Bearer {server.token()}"
    url = _runs(server)
    assert httpx.get(url, headers={"Authorization": valid}).status_code in (200, 403, 404)
    calls = server.gateway.authorizer_calls
    pair = [valid, "Bearer junk"] if order == "valid-first" else ["Bearer junk", valid]

    answer = httpx.get(url, headers=[("Authorization", pair[0]), ("Authorization", pair[1])])

    assert answer.status_code == 401
    assert answer.headers["content-type"] == PROBLEM_JSON
    assert answer.json()["type"] == PROBLEM_TYPE_BASE + "unauthenticated"
    assert server.gateway.authorizer_calls == calls


def test_the_cache_is_keyed_by_the_one_header_value(server: Server) -> None:
    valid = f"Bearer {server.token()}"
    url = _runs(server)
    httpx.get(url, headers={"Authorization": valid})
    calls = server.gateway.authorizer_calls

    again = httpx.get(url, headers={"Authorization": valid})
    other = httpx.get(url, headers={"Authorization": valid + "x"})

    assert again.status_code != 401
    assert other.status_code == 401
    assert server.gateway.authorizer_calls == calls + 1


# ================================================================ the server's own answers


@pytest.mark.parametrize(
    ("request_bytes", "status", "kind"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad-request"),
        (b"GET /v1/healthz HTTP/1.1\r\n\r\n", 400, "bad-request"),  # no Host
        (b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400, "bad-request"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http-version-not-supported"),
        (b"GET /" + b"a" * 256 * 1024, 414, "uri-too-long"),  # never ends
        (b"GET /" + b"a" * 100 * 1024 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri-too-long"),
        (
            b"GET /v1/healthz?" + b"q" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            414,
            "uri-too-long",
        ),
        (
            b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 256 * 1024,
            431,
            "request-header-fields-too-large",
        ),  # never ends
        (
            b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 130 * 1024 + b"\r\n\r\n",
            431,
            "request-header-fields-too-large",
        ),
        (
            b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 150 + b"\r\n",
            431,
            "request-header-fields-too-large",
        ),
    ],
    ids=[
        "garbage",
        "no-host",
        "space-in-name",
        "http2-preface",
        "line-that-never-ends",
        "line-past-its-cap",
        "long-query",
        "header-that-never-ends",
        "large-header",
        "many-headers",
    ],
)
def test_malformed_and_oversized_requests_are_answered_with_problems(
    server: Server, request_bytes: bytes, status: int, kind: str
) -> None:
    only_answer(*server.exchange(request_bytes)).problem(status, kind)


def test_a_head_that_does_not_arrive_in_time_is_a_408_problem(server: Server) -> None:
    started = time.monotonic()

    answers, closed = server.exchange(b"GET /v1/healthz HTTP/1.1\r\nHo")

    only_answer(answers, closed).problem(408, "request-timeout")
    assert time.monotonic() - started < LIMITS.head_timeout_seconds + 2


def test_a_slow_trickle_does_not_hold_the_head_open(server: Server) -> None:
    with server.connect() as sock:
        for byte in b"GET /v1/healthz HTTP/1.1\r\n":
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
        answers, closed = read_answers(sock)

    only_answer(answers, closed).problem(408, "request-timeout")


def test_a_body_that_stops_arriving_is_a_408_problem(server: Server) -> None:
    request = b"POST /v1/healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"

    only_answer(*server.exchange(request)).problem(408, "request-timeout")


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answers, closed = read_answers(sock, wait=LIMITS.keep_alive_seconds + 2)

    assert [a.status for a in answers] == [200]
    assert closed


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    one = b"GET /v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    answers, closed = server.exchange(one + one + last)

    assert [a.status for a in answers] == [200, 200, 200]
    assert json.loads(answers[2].body)["openapi"]
    assert closed


# ================================================================ fixed documents


def test_a_fixed_document_is_served_without_authorization(server: Server) -> None:
    answer = httpx.get(server.gateway.url + DISCOVERY)

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {"issuer": "http://127.0.0.1/realms/obp"}


def test_a_fixed_document_allows_only_reading(server: Server) -> None:
    answer = httpx.post(server.gateway.url + DISCOVERY, json={})

    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, HEAD"
    assert answer.json()["type"] == PROBLEM_TYPE_BASE + "method-not-allowed"


# ================================================================ concurrency


def test_requests_past_the_concurrency_limit_are_503_problems() -> None:
    release = threading.Event()

    def slow() -> tuple[int, dict[str, object]]:
        release.wait(10)
        return 200, {}

    container = build(load_settings(), token_verifier=FakeTokenVerifier())
    limits = ServerLimits(max_requests=1)
    gateway = make_server("127.0.0.1", 0, container, limits=limits, extra_routes={"/slow": slow})
    with gateway.start(), httpx.Client(base_url=gateway.url, timeout=10) as client:
        held = threading.Thread(target=client.get, args=("/slow",))
        held.start()
        deadline = time.monotonic() + 5
        while gateway.busy() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)

        refused = httpx.get(f"{gateway.url}/v1/healthz")

        release.set()
        held.join(10)
        assert refused.status_code == 503
        assert refused.headers["content-type"] == PROBLEM_JSON
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["type"] == PROBLEM_TYPE_BASE + "service-unavailable"
        assert httpx.get(f"{gateway.url}/v1/healthz").status_code == 200


def test_stop_closes_the_port() -> None:
    gateway = make_server("127.0.0.1", 0, build(load_settings())).start()
    address = gateway.server_address

    gateway.stop()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2).close()
