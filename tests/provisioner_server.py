"""A faithful stand-in for the ParallelCluster Provisioner behind API Gateway, over real HTTP.

One reusable server for this API (``docs/external-contracts.md`` section 1): a stdlib
``ThreadingHTTPServer`` on 127.0.0.1, port 0, in a thread. Like API Gateway with IAM auth it
VERIFIES each request's SigV4 ``Authorization`` header (recomputed with botocore from the request
as received and the shared test credentials) and answers 403 ``{"message": ...}`` for a missing,
bad, foreign or stale signature, and 403 "Missing Authentication Token" for a resource it does not
have. Behind that, like the provisioner:

- ``POST /hpc-provisioner/pcluster?project_id&vlab_id[&tier][&include_lustre]``: idempotent,
  answers the cluster wrapped in ``cluster`` with ``clusterStatus: CREATE_REQUEST_RECEIVED``,
  ``ssh_user`` and the key ARNs (``keys="current"``; ``"single"``: the older single
  ``private_ssh_key_arn``; ``"transitional"``: ``private_ssh_key_arn`` +
  ``admin_user_private_ssh_key_arn``). A POST while the stack exists (deleting included) creates
  nothing.
- ``GET`` with both ids: the DescribeCluster object, flat, plus ``vlab_id``, ``project_id``,
  ``clusterFsxId`` (``null`` without Lustre); 404 ``{"message"}`` for an unknown cluster. Without
  the ids: the listing (``{"clusters": [...]}``, no ids).
- ``DELETE`` with both ids: ``DELETE_IN_PROGRESS`` for ``Lifecycle.delete_gets`` GETs, then gone.
- ``GET /hpc-provisioner/version``: ``{"version": ...}``.

Creation is asynchronous (``Lifecycle``): after the POST, ``unseen_gets`` GETs answer 404 (the
creator Lambda has not made the stack), then CREATE_IN_PROGRESS without a ``headNode`` for
``young_gets`` GETs, with one for ``in_progress_gets`` more (or, with ``in_progress_seconds``,
by time), then CREATE_COMPLETE or CREATE_FAILED.

What the provisioner's deployment decides is set per server: ``ssh_user`` (the cluster user it
creates, ``sim``), ``head_node_address`` (the head node's address, both private and public: e.g.
``127.0.0.1`` when a real cluster on this machine stands for every head node; by default one
made up per cluster), ``key_arn`` (the ARN of the Secrets Manager secret it keeps a key pair in,
by key-pair name: ``{cluster}_sim`` and ``{cluster}``; by default made up, as the real
provisioner answers before anyone reads them). Test controls: ``finish_creation``,
``fail_next_creation``, ``create_without_lustre`` (the next creation makes no FSx whatever was
asked, ``clusterFsxId: null``, as a tier without Lustre), ``force_status``; faults for the next
N requests (``fail_next``,
``throttle_next`` with ``Retry-After``, ``slow_next``); ``clock_skew_seconds``; every request is
recorded (method, path, raw query string in the order sent, headers, verdict).
``error_bodies="text"``: 404/500 bodies are the bare message, as the provisioner's handlers
actually send them (``{"statusCode": 404, "body": e.content.message}``), instead of the
documented ``{"message": ...}``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REGION = "us-east-1"
ACCOUNT = "123456789012"
SERVICE = "execute-api"
#: The shared test credentials: the client signs with them, the server verifies with them.
CREDENTIALS = Credentials(
    "AKIAPROVISIONERTEST0",
    "provisioner-test-secret-key-0000000000000",
    "provisioner-test-session-token",
)
PCLUSTER = "/hpc-provisioner/pcluster"
VERSION = "/hpc-provisioner/version"
SERVER_VERSION = "0.9.0-test"
MAX_SKEW = timedelta(minutes=5)

SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)
INVALID_TOKEN = "The security token included in the request is invalid."
MISSING_TOKEN = "Missing Authentication Token"


@dataclass
class Lifecycle:
    """How a creation and a deletion unfold, in GETs of the cluster (or seconds)."""

    unseen_gets: int = 0
    young_gets: int = 1
    in_progress_gets: int = 1
    in_progress_seconds: float | None = None
    delete_gets: int = 1


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: str  # raw, in the order sent
    headers: dict[str, str]
    status: int  # what the server answered

    @property
    def params(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query, keep_blank_values=True)


@dataclass
class _Stack:
    vlab_id: str
    project_id: str
    lustre: bool
    tier: str
    created: float
    fail_reason: str | None
    serial: int
    gets: int = 0
    finished: bool = False
    forced: str | None = None
    deleting: bool = False
    delete_gets: int = 0

    @property
    def name(self) -> str:
        return cluster_name(self.vlab_id, self.project_id)


@dataclass
class _Fault:
    status: int = 0  # 0: no fault answer, only the delay
    message: str = ""
    retry_after: str | None = None
    delay: float = 0.0


def cluster_name(vlab_id: str, project_id: str) -> str:
    """The name the provisioner gives the project's cluster (and its stack)."""
    return f"pcluster-{vlab_id}-{project_id}"


def _arn(name: str) -> str:
    suffix = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-{suffix}"


def _ip(serial: int, public: bool = False) -> str:
    return f"{'54.210' if public else '10.0'}.{serial // 250}.{serial % 250 + 4}"


class ProvisionerServer:
    def __init__(
        self,
        *,
        lifecycle: Lifecycle | None = None,
        keys: str = "current",
        credentials: Credentials = CREDENTIALS,
        region: str = REGION,
        public_ip: bool = True,
        error_bodies: str = "json",
        ssh_user: str = "sim",
        head_node_address: str | None = None,
        key_arn: Callable[[str], str] = _arn,
    ) -> None:
        self.lifecycle = lifecycle or Lifecycle()
        self.keys = keys
        self.ssh_user = ssh_user
        self.head_node_address = head_node_address
        self.key_arn = key_arn
        self.credentials = credentials
        self.region = region
        self.public_ip = public_ip
        self.error_bodies = error_bodies
        self.clock_skew_seconds = 0.0
        self.requests: list[Recorded] = []
        self.creations = 0
        self._stacks: dict[tuple[str, str], _Stack] = {}
        self._doomed: dict[tuple[str, str], str] = {}
        self._without_lustre: set[tuple[str, str]] = set()
        self._faults: list[_Fault] = []
        self._serial = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # a quick shutdown
            name="provisioner-server",
            daemon=True,
        )

    # ---------------------------------------------------------------- life

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ProvisionerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._stacks.clear()
            self._doomed.clear()
            self._without_lustre.clear()
            self._faults.clear()
            self.creations = 0
            self.clock_skew_seconds = 0.0

    # ---------------------------------------------------------------- test controls

    def fail_next_creation(self, vlab_id: str, project_id: str, reason: str) -> None:
        with self._lock:
            self._doomed[(vlab_id, project_id)] = reason

    def create_without_lustre(self, vlab_id: str, project_id: str) -> None:
        """The next creation of this project's cluster makes no FSx, whatever was asked."""
        with self._lock:
            self._without_lustre.add((vlab_id, project_id))

    def finish_creation(self, vlab_id: str, project_id: str) -> None:
        """The creation in progress ends now (complete, or failed when doomed)."""
        with self._lock:
            stack = self._stacks[(vlab_id, project_id)]
            stack.finished = True

    def force_status(self, vlab_id: str, project_id: str, status: str | None) -> None:
        """Describe the (existing) cluster with this clusterStatus from now on (None: stop)."""
        with self._lock:
            self._stacks[(vlab_id, project_id)].forced = status

    def fail_next(self, times: int = 1, status: int = 500, message: str = "boom") -> None:
        with self._lock:
            self._faults += [_Fault(status, message) for _ in range(times)]

    def throttle_next(self, times: int = 1, retry_after: str | None = "1") -> None:
        with self._lock:
            self._faults += [
                _Fault(429, "Too Many Requests", retry_after=retry_after) for _ in range(times)
            ]

    def slow_next(self, times: int = 1, seconds: float = 1.0) -> None:
        """The next requests are answered normally, but only after ``seconds``."""
        with self._lock:
            self._faults += [_Fault(delay=seconds) for _ in range(times)]

    def exists(self, vlab_id: str, project_id: str) -> bool:
        with self._lock:
            return (vlab_id, project_id) in self._stacks

    def requests_to(self, method: str, path: str = PCLUSTER) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    # ---------------------------------------------------------------- serving

    def handle(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes, float]:
        """(status, headers, body, delay) for one request; records it."""
        parts = urlsplit(target)
        status, extra, payload, delay = self._answer(method, parts.path, parts.query, headers, body)
        with self._lock:
            self.requests.append(Recorded(method, parts.path, parts.query, headers, status))
        if self.error_bodies == "text" and status in (404, 500) and isinstance(payload, dict):
            # what the provisioner's handlers return: the bare message, no JSON, no type
            return status, extra, str(payload["message"]).encode(), delay
        data = b"" if payload is None else json.dumps(payload).encode()
        return status, {"Content-Type": "application/json", **extra}, data, delay

    def _answer(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], Any, float]:
        refusal = self.verify(method, path, query, headers, body)
        if refusal is not None:
            return 403, {"x-amzn-ErrorType": "IncompleteSignatureException"}, refusal, 0.0
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        delay = fault.delay if fault else 0.0
        if fault is not None and fault.status:
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            return fault.status, extra, {"message": fault.message}, delay
        params = dict(parse_qsl(query, keep_blank_values=True))
        if path == VERSION and method == "GET":
            return 200, {}, {"version": SERVER_VERSION}, delay
        if path != PCLUSTER or method not in ("GET", "POST", "DELETE"):
            return 403, {}, {"message": MISSING_TOKEN}, delay
        vlab_id, project_id = params.get("vlab_id"), params.get("project_id")
        if vlab_id is None or project_id is None:
            if method == "GET":
                return 200, {}, self._listing(), delay
            missing = "vlab_id" if vlab_id is None else "project_id"
            return 400, {}, {"message": f"missing required '{missing}' query param"}, delay
        with self._lock:
            if method == "POST":
                return 200, {}, self._create(vlab_id, project_id, params), delay
            if method == "DELETE":
                return (*self._delete(vlab_id, project_id), delay)
            return (*self._describe(vlab_id, project_id), delay)

    # ---------------------------------------------------------------- SigV4, as API Gateway

    def verify(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes
    ) -> dict[str, str] | None:
        """None when the request is signed by the shared credentials, else the 403 body."""
        h = {k.lower(): v for k, v in headers.items()}
        auth = h.get("authorization")
        if not auth:
            return {"message": MISSING_TOKEN}
        algorithm, _, rest = auth.partition(" ")
        fields = dict(part.strip().partition("=")[::2] for part in rest.split(",") if "=" in part)
        if (
            algorithm != "AWS4-HMAC-SHA256"
            or not {
                "Credential",
                "SignedHeaders",
                "Signature",
            }
            <= fields.keys()
        ):
            return {
                "message": f"Authorization header requires 'Credential', 'Signature', "
                f"'SignedHeaders' parameters. Authorization={auth[:40]}"
            }
        scope = fields["Credential"].split("/")
        if len(scope) != 5 or scope[4] != "aws4_request":
            return {"message": "Credential should be scoped to a valid region."}
        access_key, day, region, service, _ = scope
        if access_key != self.credentials.access_key:
            return {"message": INVALID_TOKEN}
        if service != SERVICE:
            return {"message": f"Credential should be scoped to correct service: '{SERVICE}'."}
        if region != self.region:
            return {"message": "Credential should be scoped to a valid region."}
        if self.credentials.token and h.get("x-amz-security-token") != self.credentials.token:
            return {"message": INVALID_TOKEN}
        amz_date = h.get("x-amz-date", "")
        try:
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return {
                "message": "Authorization header requires existence of either a "
                "'X-Amz-Date' or a 'Date' header."
            }
        if day != amz_date[:8]:
            return {"message": SIGNATURE_MISMATCH}
        now = datetime.now(UTC) + timedelta(seconds=self.clock_skew_seconds)
        stamp = "%Y%m%dT%H%M%SZ"
        if signed_at < now - MAX_SKEW:
            return {
                "message": f"Signature expired: {amz_date} is now earlier than "
                f"{(now - MAX_SKEW).strftime(stamp)} ({now.strftime(stamp)} - 5 min.)"
            }
        if signed_at > now + MAX_SKEW:
            return {
                "message": f"Signature not yet current: {amz_date} is still later than "
                f"{(now + MAX_SKEW).strftime(stamp)} ({now.strftime(stamp)} + 5 min.)"
            }
        signed = fields["SignedHeaders"].split(";")
        if "host" not in signed or any(name not in h for name in signed):
            return {"message": SIGNATURE_MISMATCH}
        url = f"http://{h['host']}{path}" + (f"?{query}" if query else "")
        request = AWSRequest(
            method=method, url=url, headers={name: h[name] for name in signed}, data=body
        )
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(self.credentials, SERVICE, self.region)
        if signer.signed_headers(signer.headers_to_sign(request)) != fields["SignedHeaders"]:
            return {"message": SIGNATURE_MISMATCH}
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        if not hmac.compare_digest(expected, fields["Signature"]):
            return {"message": SIGNATURE_MISMATCH}
        return None

    # ---------------------------------------------------------------- the provisioner (locked)

    def _create(self, vlab_id: str, project_id: str, params: dict[str, str]) -> dict[str, Any]:
        key = (vlab_id, project_id)
        stack = self._stacks.get(key)
        if stack is None:  # an existing stack (even one being deleted) is not created again
            self.creations += 1
            self._serial += 1
            stack = _Stack(
                vlab_id,
                project_id,
                lustre=params.get("include_lustre", "").lower() == "true"
                and key not in self._without_lustre,
                tier=params.get("tier", "lite"),
                created=time.monotonic(),
                fail_reason=self._doomed.pop(key, None),
                serial=self._serial,
            )
            self._without_lustre.discard(key)
            self._stacks[key] = stack
        answer: dict[str, Any] = {
            "clusterName": stack.name,
            "clusterStatus": "CREATE_REQUEST_RECEIVED",
            "ssh_user": self.ssh_user,
        }
        user, admin = self.key_arn(f"{stack.name}_sim"), self.key_arn(stack.name)
        if self.keys == "single":
            answer["private_ssh_key_arn"] = user
        elif self.keys == "transitional":
            answer["private_ssh_key_arn"] = user
            answer["admin_user_private_ssh_key_arn"] = admin
        else:
            answer["user_private_ssh_key_arn"] = user
            answer["admin_private_ssh_key_arn"] = admin
        return {"cluster": answer}

    def _delete(self, vlab_id: str, project_id: str) -> tuple[int, dict[str, str], Any]:
        stack = self._stacks.get((vlab_id, project_id))
        if stack is None:
            return 404, {}, {"message": _not_found(vlab_id, project_id)}
        stack.deleting = True
        if self.lifecycle.delete_gets <= stack.delete_gets:
            del self._stacks[(vlab_id, project_id)]
        summary = self._summary(stack, "DELETE_IN_PROGRESS")
        return 200, {}, {"cluster": summary}

    def _describe(self, vlab_id: str, project_id: str) -> tuple[int, dict[str, str], Any]:
        key = (vlab_id, project_id)
        stack = self._stacks.get(key)
        if stack is None:
            return 404, {}, {"message": _not_found(vlab_id, project_id)}
        if stack.deleting:
            stack.delete_gets += 1
            if stack.delete_gets >= self.lifecycle.delete_gets:
                del self._stacks[key]
            if stack.delete_gets > self.lifecycle.delete_gets:
                return 404, {}, {"message": _not_found(vlab_id, project_id)}
            return 200, {}, self._described(stack, "DELETE_IN_PROGRESS", head=True)
        life, n = self.lifecycle, stack.gets
        stack.gets += 1
        if stack.forced is not None:
            return 200, {}, self._described(stack, stack.forced, head=True)
        if not stack.finished:
            if n < life.unseen_gets:
                return 404, {}, {"message": _not_found(vlab_id, project_id)}
            if life.in_progress_seconds is not None:
                age = time.monotonic() - stack.created
                if age < life.in_progress_seconds:
                    young = age < life.in_progress_seconds / 2
                    return 200, {}, self._described(stack, "CREATE_IN_PROGRESS", head=not young)
            else:
                n -= life.unseen_gets
                if n < life.young_gets + life.in_progress_gets:
                    head = n >= life.young_gets
                    return 200, {}, self._described(stack, "CREATE_IN_PROGRESS", head=head)
        if stack.fail_reason is not None:
            return 200, {}, self._described(stack, "CREATE_FAILED", head=False)
        return 200, {}, self._described(stack, "CREATE_COMPLETE", head=True)

    def _summary(self, stack: _Stack, status: str) -> dict[str, Any]:
        return {
            "clusterName": stack.name,
            "clusterStatus": status,
            "cloudformationStackStatus": status
            if status != "CREATE_FAILED"
            else "ROLLBACK_COMPLETE",
            "cloudformationStackArn": f"arn:aws:cloudformation:{self.region}:{ACCOUNT}:stack/"
            f"{stack.name}/{stack.serial:08d}-0000-4000-8000-000000000000",
            "region": self.region,
            "version": "3.13.0",
            "scheduler": {"type": "slurm"},
        }

    def _described(self, stack: _Stack, status: str, *, head: bool) -> dict[str, Any]:
        created = datetime(2026, 3, 1, 12, 0, tzinfo=UTC) + timedelta(minutes=stack.serial)
        stamp = created.isoformat().replace("+00:00", "Z")
        stack_status = {
            "CREATE_FAILED": "ROLLBACK_COMPLETE",
            "CREATE_COMPLETE": "CREATE_COMPLETE",
            "DELETE_IN_PROGRESS": "DELETE_IN_PROGRESS",
        }.get(status, "CREATE_IN_PROGRESS")
        described: dict[str, Any] = {
            "clusterName": stack.name,
            "clusterStatus": status,
            "cloudFormationStackStatus": stack_status,
            "cloudformationStackArn": self._summary(stack, status)["cloudformationStackArn"],
            "computeFleetStatus": "RUNNING" if status == "CREATE_COMPLETE" else "UNKNOWN",
            "creationTime": stamp,
            "lastUpdatedTime": stamp,
            "region": self.region,
            "version": "3.13.0",
            "scheduler": {"type": "slurm"},
            "clusterConfiguration": {"url": "https://example.invalid/config.yaml"},
            "tags": [
                {"key": "obp:costcenter:vlabid", "value": stack.vlab_id},
                {"key": "obp:costcenter:project", "value": stack.project_id},
                {"key": "parallelcluster:version", "value": "3.13.0"},
            ],
            "vlab_id": stack.vlab_id,
            "project_id": stack.project_id,
            "clusterFsxId": f"fs-{stack.serial:017x}" if stack.lustre else None,
        }
        if head:
            node: dict[str, Any] = {
                "instanceId": f"i-{stack.serial:017x}",
                "instanceType": "t3.medium",
                "launchTime": stamp,
                "state": "running",
                "privateIpAddress": self.head_node_address or _ip(stack.serial),
            }
            if self.public_ip:
                node["publicIpAddress"] = self.head_node_address or _ip(stack.serial, public=True)
            described["headNode"] = node
        if status == "CREATE_FAILED":
            described["failures"] = [
                {"failureCode": "ClusterCreationFailure", "failureReason": stack.fail_reason}
            ]
        return described

    def _listing(self) -> dict[str, Any]:
        with self._lock:
            return {
                "clusters": [self._summary(s, "CREATE_COMPLETE") for s in self._stacks.values()]
            }


def _not_found(vlab_id: str, project_id: str) -> str:
    return (
        f"Cluster 'pcluster-{vlab_id}-{project_id}' does not exist or belongs to an "
        "incompatible ParallelCluster major version."
    )


def _handler_for(server: ProvisionerServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status, headers, data, delay = server.handle(
                self.command, self.path, dict(self.headers.items()), body
            )
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (a timeout test): nothing to answer
                self.close_connection = True

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return Handler


@contextmanager
def provisioner_server(**kwargs: Any) -> Iterator[ProvisionerServer]:
    server = ProvisionerServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def sign(
    method: str,
    url: str,
    *,
    credentials: Credentials = CREDENTIALS,
    region: str = REGION,
    service: str = SERVICE,
    body: bytes = b"",
) -> dict[str, str]:
    """The headers a correct client sends (botocore's SigV4), for raw-HTTP tests."""
    request = AWSRequest(method=method, url=url, data=body)
    SigV4Auth(credentials, service, region).add_auth(request)
    return dict(request.headers.items())
