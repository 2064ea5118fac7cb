"""API Gateway on a laptop: real HTTP in, the authorizer and the API Lambda behind it.

A small ``ThreadingHTTPServer`` turns each request into the REST API's payload-1.0 proxy event
(a ``/{proxy+}`` resource on stage ``local``) and does what API Gateway does with it:

- a public path (``http.api.public_path``) goes straight to the API handler;
- any other needs an ``Authorization`` header (its identity source), else 401; the REQUEST
  authorizer's answer is cached by that header's value for ``authorizer_ttl`` seconds and reused
  for every method and path, as API Gateway does; ``Unauthorized`` is a 401, a policy that does
  not allow the request a 403, any other failure of the authorizer a 500;
- the caller's context lands in ``requestContext.authorizer`` of the API's event.

The gateway's own answers (401, 403, 413, 500) are the API's deployed gateway responses: RFC 9457
problems that say nothing about why a token was refused. Bodies above 10 MB are refused (413),
as API Gateway does. Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from obp_workflow.entrypoints.http import api, authorization
from obp_workflow.entrypoints.http.models import PROBLEM_JSON, Problem, problem

if TYPE_CHECKING:
    from obp_workflow.entrypoints.composition.root import Service

log = logging.getLogger("obp_workflow.local_gateway")

API_ID = "local"
REGION = "local"
ACCOUNT = "000000000000"
#: API Gateway REST refuses larger payloads before any Lambda runs.
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024

#: The gateway responses the API is deployed with (UNAUTHORIZED, ACCESS_DENIED, ...).
UNAUTHORIZED = problem(401, "unauthenticated", "Unauthorized", "authentication required")
ACCESS_DENIED = problem(403, "forbidden", "Forbidden", "the caller may not access this resource")
REQUEST_TOO_LARGE = problem(
    413, "payload-too-large", "Payload too large", "the body must be at most 10 MB"
)
AUTHORIZER_FAILURE = problem(
    500, "internal-error", "Internal server error", "the request could not be authorized"
)


@dataclass(frozen=True)
class _Grant:
    """A cached authorizer answer."""

    principal_id: str
    statements: tuple[Mapping[str, Any], ...]
    context: Mapping[str, Any]
    expires: float


class LocalGateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        container: Service,
        *,
        stage: str = "local",
        authorizer_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(address, _RequestHandler)
        self.container = container
        self.stage = stage
        self.authorizer_ttl = authorizer_ttl
        self.clock = clock
        self.authorizer_calls = 0
        self._grants: dict[str, _Grant] = {}
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def method_arn(self, method: str, path: str) -> str:
        return f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{self.stage}/{method}{path}"

    def authorize(self, event: dict[str, Any], identity: str) -> _Grant | Problem:
        """The cached or fresh answer of the authorizer for this identity source."""
        now = self.clock()
        with self._lock:
            grant = self._grants.get(identity)
        if grant is None or grant.expires <= now:
            with self._lock:
                self.authorizer_calls += 1
            try:
                answer = authorization.authorize(event, self.container.token_verifier())
            except Exception as exc:
                if str(exc) == "Unauthorized":
                    return UNAUTHORIZED
                log.exception("the authorizer failed")
                return AUTHORIZER_FAILURE
            grant = _Grant(
                principal_id=str(answer["principalId"]),
                statements=tuple(answer["policyDocument"]["Statement"]),
                context=dict(answer.get("context") or {}),
                expires=now + self.authorizer_ttl,
            )
            if self.authorizer_ttl > 0:
                with self._lock:
                    if len(self._grants) >= 10_000:  # drop what expired
                        self._grants = {k: g for k, g in self._grants.items() if g.expires > now}
                    self._grants[identity] = grant
        if not _allows(grant.statements, event["methodArn"]):
            return ACCESS_DENIED
        return grant


def make_server(
    host: str = "127.0.0.1", port: int = 0, container: Service | None = None, **options: Any
) -> LocalGateway:
    """A gateway bound to ``host:port`` (0: any free port); serve it with ``serve_forever``."""
    if container is None:
        from obp_workflow.entrypoints.composition.root import build
        from obp_workflow.entrypoints.composition.settings import load_settings

        container = build(load_settings())
    return LocalGateway((host, port), container, **options)


def serve(host: str = "127.0.0.1", port: int = 8080, container: Service | None = None) -> None:
    """Serve the API until interrupted."""
    server = make_server(host, port, container)
    log.warning("obp-workflow API on %s/v1 (local gateway, stage %s)", server.url, server.stage)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ================================================================ one request


class _RequestHandler(BaseHTTPRequestHandler):
    server: LocalGateway
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY a keep-alive client
    # waits for its delayed ACK (~40 ms) on every response.
    disable_nagle_algorithm = True

    def __getattr__(self, name: str) -> Any:
        # Every method (GET ... TRACE, QUERY, anything) goes to the API, which answers 405.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _serve(self) -> None:
        body = self._read_body()
        if body is None:
            self.close_connection = True
            self._write_problem(REQUEST_TOO_LARGE)
            return
        split = urlsplit(self.path)
        path = unquote(split.path) or "/"
        event = self._event(path, split.query, body)
        if not api.public_path(path):
            identity = self.headers.get("Authorization")
            if not identity:
                self._write_problem(UNAUTHORIZED)
                return
            authorizer_event = {
                k: v for k, v in event.items() if k not in ("body", "isBase64Encoded")
            }
            authorizer_event["type"] = "REQUEST"
            answer = self.server.authorize(authorizer_event, identity)
            if isinstance(answer, Problem):
                self._write_problem(answer)
                return
            event["requestContext"]["authorizer"] = {
                "principalId": answer.principal_id,
                **answer.context,
            }
        try:
            response = api.handle(event, _LambdaContext(), self.server.container.requests)
        except Exception:
            # A Lambda that raises is a 502 at the gateway.
            log.exception("the API handler raised")
            self._write(
                502, {"Content-Type": ["application/json"]}, b'{"message":"Internal server error"}'
            )
            return
        self._write_lambda_response(response)

    def _read_body(self) -> bytes | None:
        """The request body; None when it is larger than API Gateway accepts."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_PAYLOAD_BYTES:
                    return None
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > MAX_PAYLOAD_BYTES:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _event(self, path: str, query: str, body: bytes) -> dict[str, Any]:
        multi_headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            multi_headers.setdefault(name, []).append(value)
        multi_query: dict[str, list[str]] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            multi_query.setdefault(name, []).append(value)
        try:
            text: str | None = body.decode("utf-8") if body else None
            encoded = False
        except UnicodeDecodeError:
            text, encoded = base64.b64encode(body).decode(), True
        method = self.command.upper()
        return {
            "resource": "/{proxy+}",
            "path": path,
            "httpMethod": method,
            "methodArn": self.server.method_arn(method, path),
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
                "stage": self.server.stage,
                "protocol": self.request_version,
                "requestId": str(uuid.uuid4()),
                "requestTimeEpoch": int(time.time() * 1000),
                "identity": {"sourceIp": self.client_address[0]},
            },
            "body": text,
            "isBase64Encoded": encoded,
        }

    def _write_lambda_response(self, response: Mapping[str, Any]) -> None:
        headers: dict[str, list[str]] = {}
        for name, value in (response.get("headers") or {}).items():
            headers[name] = [str(value)]
        for name, values in (response.get("multiValueHeaders") or {}).items():
            headers[name] = [str(v) for v in values]
        raw = response.get("body") or ""
        data = base64.b64decode(raw) if response.get("isBase64Encoded") else raw.encode()
        self._write(int(response.get("statusCode", 502)), headers, data)

    def _write_problem(self, body: Problem) -> None:
        data = body.model_dump_json(exclude_none=True).encode()
        self._write(body.status, {"Content-Type": [PROBLEM_JSON]}, data)

    def _write(self, status: int, headers: Mapping[str, list[str]], data: bytes) -> None:
        self.send_response(status)
        for name, values in headers.items():
            if name.lower() in ("content-length", "connection", "transfer-encoding"):
                continue
            for value in values:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class _LambdaContext:
    """The few attributes of a Lambda context that handlers read."""

    function_name = "obp-workflow-api"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:obp-workflow-api"

    def __init__(self) -> None:
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def _allows(statements: tuple[Mapping[str, Any], ...], method_arn: str) -> bool:
    """IAM evaluation, as far as API Gateway needs it: an explicit Deny wins over any Allow."""
    allowed = False
    for statement in statements:
        actions = _as_list(statement.get("Action"))
        resources = _as_list(statement.get("Resource"))
        if not any(_glob(a, "execute-api:Invoke") for a in actions):
            continue
        if not any(_glob(r, method_arn) for r in resources):
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
