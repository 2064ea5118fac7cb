"""Harnesses of the AWS adapters (ECS, Secrets Manager, S3), over a real moto server.

The moto server is this module's own: started on first use (``moto()``), shared by every AWS
harness of the session, stopped when the interpreter exits. A harness is built with no
arguments (``request.param()`` in ``conftest.py``), so it finds the server here rather than
through a fixture. Each harness empties the server when it is built: use one AWS harness at a
time in a test (a second one would wipe the first one's resources).

moto ignores RunTask's ``clientToken``, which is what makes ECS start one task for callers that
race. ``EcsTokenProxy`` puts ECS's documented behaviour in front of moto, on the wire: a token
seen before, with the same parameters, is answered with the original answer (nothing started);
with other parameters, it is a ConflictException naming the token's tasks. The ECS adapter's
clients talk to moto through that proxy; the harness's own (set-up, inspection) clients do not.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import boto3

from obp_workflow.adapters.aws.ecs import EcsInstanceOrchestrator, EcsTaskConfig
from obp_workflow.adapters.aws.s3 import S3ObjectStore
from obp_workflow.adapters.aws.secrets import SecretsManagerSecretStore
from obp_workflow.adapters.fake.object_store import FakeObjectStore
from obp_workflow.core.cluster import SecretRef
from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.instances import InstanceOrchestrator
from obp_workflow.ports.objects import ObjectStore
from obp_workflow.ports.secrets import SecretStore
from tests.moto_server import REGION, MotoServer, start_moto

if TYPE_CHECKING:
    from mypy_boto3_ecs.client import ECSClient
    from mypy_boto3_ecs.type_defs import TaskTypeDef
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_secretsmanager.client import SecretsManagerClient

    from tests.contract.harness import InstanceOrchestratorHarness, SecretStoreHarness

# ==================================================================== the moto server


class _Session:
    """What the AWS harnesses of this test session share (started on first use)."""

    server: MotoServer | None = None
    proxy: EcsTokenProxy | None = None
    lock = threading.Lock()


def moto() -> MotoServer:
    """The session's moto server for AWS harnesses, started on first use."""
    with _Session.lock:
        if _Session.server is None:
            _Session.server = start_moto(Path(tempfile.mkdtemp(prefix="obp-moto-aws-")))
            atexit.register(_Session.server.stop)
        return _Session.server


def ecs_proxy() -> EcsTokenProxy:
    """The session's ECS clientToken proxy in front of ``moto()``."""
    server = moto()
    with _Session.lock:
        if _Session.proxy is None:
            _Session.proxy = EcsTokenProxy(server.endpoint)
            atexit.register(_Session.proxy.close)
        return _Session.proxy


def fresh_moto() -> MotoServer:
    """The moto server, emptied; ECS tasks stay in the status they are put in (moto's default
    moves a task one status towards STOPPED at every describe)."""
    server = moto()
    server.reset()
    server.set_ecs_transitions(10**9)
    if _Session.proxy is not None:
        _Session.proxy.reset()
    return server


def aws_client(service: str, endpoint: str | None = None) -> Any:
    """A low-level client of moto (or of ``endpoint``), dummy credentials, no retries."""
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint or moto().endpoint,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=MotoServer.client_config(),
    )


# ==================================================================== ECS clientToken proxy


@dataclass
class _Answer:
    params: str  # the request without its token, canonical JSON
    status: int
    content_type: str
    body: bytes
    task_arns: list[str]


class EcsTokenProxy:
    """An HTTP proxy to moto that gives RunTask ECS's clientToken idempotency."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.tokens: list[str] = []  # every RunTask token received, in order
        self._answers: dict[str, _Answer] = {}
        self._token_locks: dict[str, threading.Lock] = {}
        self._fail_next: str | None = None
        self._guard = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms wait

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "content-length", "connection")
                }
                if self.headers.get("X-Amz-Target", "").endswith(".RunTask"):
                    status, content_type, payload = proxy.run_task(self.path, headers, body)
                else:
                    status, content_type, payload = proxy.forward(self.path, headers, body)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self._guard:
            self.tokens.clear()
            self._answers.clear()
            self._token_locks.clear()
            self._fail_next = None

    def fail_next_run_task(self, reason: str) -> None:
        """The next RunTask is answered 200 with no task and ``failures: [{reason}]``."""
        with self._guard:
            self._fail_next = reason

    def forward(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        request = urllib.request.Request(
            self.upstream + path, data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.headers.get("Content-Type", ""), answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Content-Type", ""), error.read()

    def run_task(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        params = json.loads(body)
        token = params.pop("clientToken", None)
        with self._guard:
            if token:
                self.tokens.append(token)
            failure, self._fail_next = self._fail_next, None
            lock = self._token_locks.setdefault(token or "", threading.Lock())
        content_type = "application/x-amz-json-1.1"
        if failure is not None:
            arn = "arn:aws:ecs:us-east-1:123456789012:container-instance/none"
            answer = {"tasks": [], "failures": [{"arn": arn, "reason": failure}]}
            return 200, content_type, json.dumps(answer).encode()
        if not token:
            return self.forward(path, headers, body)
        canonical = json.dumps(params, sort_keys=True)
        with lock:  # callers racing with one token: the first runs it, the others repeat it
            seen = self._answers.get(token)
            if seen is not None:
                if seen.params == canonical:
                    return seen.status, seen.content_type, seen.body
                conflict = {
                    "__type": "ConflictException",
                    "message": "The clientToken is already in use with a different request.",
                    "resourceIds": seen.task_arns,
                }
                return 400, content_type, json.dumps(conflict).encode()
            status, content_type, payload = self.forward(path, headers, body)
            if status == 200:
                arns = [t["taskArn"] for t in json.loads(payload).get("tasks", [])]
                self._answers[token] = _Answer(canonical, status, content_type, payload, arns)
            return status, content_type, payload

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# ==================================================================== InstanceOrchestrator

CLUSTER = "obp-workflow"
FAMILY = "obp-workflow-instance"
CONTAINER = "workflow"


class EcsInstanceOrchestratorHarness:
    """EcsInstanceOrchestrator on a moto ECS cluster (FARGATE, awsvpc), through the clientToken
    proxy."""

    def __init__(self, **config: Any) -> None:
        fresh_moto()
        self.proxy = ecs_proxy()
        ec2 = aws_client("ec2")
        vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(
            GroupName="obp-workflow-instances", Description="workflow instances", VpcId=vpc
        )["GroupId"]
        self.ecs: ECSClient = aws_client("ecs")  # straight to moto: set-up and inspection
        self.ecs.create_cluster(clusterName=CLUSTER)
        self.ecs.register_task_definition(
            family=FAMILY,
            networkMode="awsvpc",
            requiresCompatibilities=["FARGATE"],
            cpu="256",
            memory="512",
            containerDefinitions=[
                {"name": CONTAINER, "image": "obp/workflow:test", "memory": 512, "essential": True}
            ],
        )
        settings: dict[str, Any] = {
            "cluster": CLUSTER,
            "task_definition": FAMILY,
            "container_name": CONTAINER,
            "subnets": [subnet],
            "security_groups": [group],
            "extra_environment": {"OBP_LOG_LEVEL": "INFO"},
            "cost_tags": {"obp:costcenter:service": "workflow"},
        }
        settings.update(config)
        self.config = EcsTaskConfig(**settings)
        self.orchestrator: InstanceOrchestrator = self.another_orchestrator()

    def another_orchestrator(
        self, wall_clock: Callable[[], float] = time.time, **config: Any
    ) -> EcsInstanceOrchestrator:
        """An orchestrator with its own client, as another process of the service would have."""
        client: ECSClient = aws_client("ecs", self.proxy.endpoint)
        return EcsInstanceOrchestrator(
            client, replace(self.config, **config), wall_clock=wall_clock
        )

    def starts(self) -> int:
        """Tasks moto ever started in the cluster (moto lists stopped ones too, and keeps them)."""
        return len(self._all_arns())

    def tasks(self, started_by: str | None = None) -> list[TaskTypeDef]:
        """Every task of the cluster (or of one startedBy), described, with tags."""
        arns = self._all_arns()
        if not arns:
            return []
        found = self.ecs.describe_tasks(cluster=CLUSTER, tasks=arns, include=["TAGS"])["tasks"]
        return [t for t in found if started_by is None or t.get("startedBy") == started_by]

    def live_tasks(self, project: ProjectRef) -> list[TaskTypeDef]:
        return [
            t
            for t in self.tasks(project.key)
            if t.get("desiredStatus") == "RUNNING" and t.get("lastStatus") == "RUNNING"
        ]

    def start_behind_the_back(self, started_by: str) -> str:
        """RunTask as someone else (no token): a task the orchestrator did not start."""
        answer = self.ecs.run_task(
            cluster=CLUSTER,
            taskDefinition=FAMILY,
            launchType="FARGATE",
            networkConfiguration={
                "awsvpcConfiguration": {
                    "subnets": list(self.config.subnets),
                    "securityGroups": list(self.config.security_groups),
                }
            },
            startedBy=started_by,
        )
        return answer["tasks"][0]["taskArn"]

    def _all_arns(self) -> list[str]:
        arns: list[str] = []
        for page in self.ecs.get_paginator("list_tasks").paginate(cluster=CLUSTER):
            arns.extend(page["taskArns"])
        return arns

    def close(self) -> None:
        pass


# ==================================================================== SecretStore


class SecretsManagerSecretStoreHarness:
    """SecretsManagerSecretStore on moto; ``gets()`` counts the GetSecretValue calls it made."""

    def __init__(
        self, *, ttl_seconds: float = 300, clock: Callable[[], float] = time.monotonic
    ) -> None:
        fresh_moto()
        self.client: SecretsManagerClient = aws_client("secretsmanager")
        self._gets = 0
        self._lock = threading.Lock()
        self.client.meta.events.register("before-call.secrets-manager.GetSecretValue", self._count)
        self.store: SecretStore = SecretsManagerSecretStore(self.client, ttl_seconds, clock)

    def _count(self, **_kwargs: Any) -> None:
        with self._lock:
            self._gets += 1

    def gets(self) -> int:
        return self._gets

    def put(self, name: str, value: str) -> SecretRef:
        return SecretRef(self.client.create_secret(Name=name, SecretString=value)["ARN"])

    def close(self) -> None:
        pass


# ==================================================================== ObjectStore


class ObjectStoreHarness(Protocol):
    store: ObjectStore

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Store an object behind the adapter's back (creating the bucket when needed)."""

    def put_many(self, bucket: str, keys: Sequence[str], data: bytes) -> None:
        """Store many objects with the same content, as fast as the store allows."""

    def list_requests(self) -> int:
        """How many list requests (pages) the adapter made; 0 when it has no pages."""

    def close(self) -> None: ...


class FakeObjectStoreHarness:
    def __init__(self) -> None:
        self.fake = FakeObjectStore()
        self.store: ObjectStore = self.fake

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.fake.put(bucket, key, data)

    def put_many(self, bucket: str, keys: Sequence[str], data: bytes) -> None:
        for key in keys:
            self.fake.put(bucket, key, data)

    def list_requests(self) -> int:
        return 0

    def close(self) -> None:
        pass


class S3ObjectStoreHarness:
    def __init__(self) -> None:
        fresh_moto()
        self.client: S3Client = aws_client("s3")
        self._buckets: set[str] = set()
        self._lists = 0
        self.client.meta.events.register("before-call.s3.ListObjectsV2", self._count_list)
        self.store: ObjectStore = S3ObjectStore(self.client)
        # The harness's writes go through their own client: they are not the adapter's calls.
        self._writer: S3Client = aws_client("s3")

    def _count_list(self, **_kwargs: Any) -> None:
        self._lists += 1

    def _bucket(self, bucket: str) -> None:
        if bucket not in self._buckets:
            self._writer.create_bucket(Bucket=bucket)
            self._buckets.add(bucket)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self._bucket(bucket)
        self._writer.put_object(Bucket=bucket, Key=key, Body=data)

    def put_many(self, bucket: str, keys: Sequence[str], data: bytes) -> None:
        self._bucket(bucket)
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda k: self._writer.put_object(Bucket=bucket, Key=k, Body=data), keys))

    def list_requests(self) -> int:
        return self._lists

    def close(self) -> None:
        pass


def md5_etag(data: bytes) -> str:
    """S3's etag of a single-part upload, without quotes."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# ==================================================================== static conformance

if TYPE_CHECKING:  # mypy proves each harness implements its port's harness protocol
    _orchestrators: list[Callable[[], InstanceOrchestratorHarness]] = [
        EcsInstanceOrchestratorHarness
    ]
    _secret_stores: list[Callable[[], SecretStoreHarness]] = [SecretsManagerSecretStoreHarness]
    _object_stores: list[Callable[[], ObjectStoreHarness]] = [
        FakeObjectStoreHarness,
        S3ObjectStoreHarness,
    ]
