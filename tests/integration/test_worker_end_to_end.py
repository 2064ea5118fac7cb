"""The whole service, end to end, through its real processes on the production adapters.

A run is POSTed through the local gateway (API Gateway on loopback: the authorizer with a token
minted by the Keycloak-shaped issuer, then the API over a container built with
``OBP_ADAPTERS=aws``): it is stored in DynamoDB and the project's workflow instance is started
on ECS (both on moto). The test then starts that instance as ECS would: the worker process
(``python -m obp_workflow.entrypoints.cli worker``) with the environment of the ECS task (the
task definition's, which carries the deployment's ``OBP_*`` settings, overridden by the
RunTask's container overrides, read back with DescribeTasks). The worker provisions the
project's cluster through the provisioner test server (SigV4), whose head node is the real
Slurm stack on this machine (sshd on 127.0.0.1:2222, the host key pinned from Secrets Manager,
the SSH keys in Secrets Manager under the names of the provisioner's answer), submits, watches,
syncs (the Lustre HSM export as obpadmin through the stack's ``lfs`` emulator into the moto
bucket, or the direct upload) and registers in the Nexus test server with the service's own
token. The test reads the outcome back through the gateway, and checks it against the peers
themselves (``sacct``, the bucket, Nexus).

One set of servers serves the module; each test works in projects of its own (so a cluster of
its own at the provisioner) and stops its worker with SIGTERM, which must exit 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import pytest
from botocore.credentials import Credentials

from obp_workflow.adapters.aws.dynamodb import RUN_PREFIX, create_table
from obp_workflow.adapters.nexus.graph import NexusKnowledgeGraph
from obp_workflow.core.identity import ProjectRef
from obp_workflow.entrypoints.composition.root import Service, build
from obp_workflow.entrypoints.composition.settings import load_settings
from obp_workflow.entrypoints.local.gateway import LocalGateway, make_server
from tests.contract.harness_aws import aws_client, fresh_moto
from tests.contract.harness_sync import LFS_CONF, lfs_conf
from tests.keycloak_issuer import KeycloakIssuer
from tests.nexus_server import NexusServer
from tests.provisioner_server import ProvisionerServer, cluster_name
from tests.stack import accounted, slurm, stack, tagged_ids, wait_until

pytestmark = pytest.mark.stack

SERVICE_CLIENT = "obp-workflow-service"
CLIENT_SECRET = "e2e-test-client-secret-7c1d"  # a test credential
CLIENT_SECRET_ID = "obp/workflow-client"
NEXUS_PUBLIC = "https://nexus.e2e.test/v1"
BUCKET = "obp-e2e-nexus-data"  # the Nexus data bucket behind the Nexus-DRA
PREFIX = "e2e"
DRA_PATH = "/project"
S3_STORAGE = "nexus-data"
RUNS_TABLE = "obp-e2e-runs"
ECS_CLUSTER = "obp-e2e"
FAMILY = "obp-e2e-workflow"
CONTAINER = "workflow"
#: The whole lifecycle of a run that ends well.
LIFECYCLE = [
    "ACCEPTED",
    "PROVISIONING",
    "SUBMITTING",
    "QUEUED",
    "RUNNING",
    "SYNCING",
    "REGISTERING",
    "DONE",
]
#: Sleeps $1 seconds (long enough to be seen RUNNING), then writes each output named after it.
WRITE_OUTPUTS = (
    'sleep "$1"; shift; for f in "$@"; do mkdir -p "$(dirname "$f")";'
    ' printf "%s:%s:" "$OBP_RUN_ID" "$f" > "$f"; done'
)
OUTPUTS = ["spikes.dat", "reports/soma.h5"]


def writes(outputs: list[str], seconds: int = 2) -> dict[str, Any]:
    return {
        "name": "end to end",
        "command": ["bash", "-c", WRITE_OUTPUTS, "write-outputs", str(seconds), *outputs],
        "outputs": outputs,
        "resources": {"time_limit_minutes": 5},
    }


def content_of(run_id: str, path: str) -> bytes:
    return f"{run_id}:{path}:".encode()


def transitions(run: dict[str, Any]) -> list[str]:
    return [e["to_state"] for e in run["timeline"] if e["from_state"] != e["to_state"]]


# ==================================================================== the servers


@dataclass
class World:
    gateway: LocalGateway
    client: httpx.Client
    container: Service
    realm: KeycloakIssuer
    nexus: NexusServer
    provisioner: ProvisionerServer
    graph: NexusKnowledgeGraph
    logs: Path
    tags: list[str] = field(default_factory=list)
    tokens: dict[ProjectRef, str] = field(default_factory=dict)

    # ---------------------------------------------------------------- projects and callers

    def new_project(self, *, lustre: bool) -> ProjectRef:
        """A project of its own: its Nexus project, and its cluster's host key published (what
        the head node's configure step does); without Lustre, the provisioner makes no FSx."""
        project = ProjectRef.parse(str(uuid.uuid4()), str(uuid.uuid4()))
        self.nexus.create_project(*self.graph.project_for(project))
        put_secret(
            f"{cluster_name(project.virtual_lab_id, project.project_id)}-host-key",
            stack().host_key,
        )
        if not lustre:
            self.provisioner.create_without_lustre(project.virtual_lab_id, project.project_id)
        return project

    def login(self, project: ProjectRef) -> dict[str, str]:
        """A member of ``project``, with a token of the test realm (one per project)."""
        token = self.tokens.get(project)
        if token is None:
            groups = [f"/proj/{project.virtual_lab_id}/{project.project_id}/member"]
            token = self.realm.mint(
                "ada-" + project.project_id[:8], username="ada", groups=groups, lifetime=900
            )
            self.tokens[project] = token
        return {"Authorization": f"Bearer {token}"}

    # ---------------------------------------------------------------- the API

    @staticmethod
    def runs_url(project: ProjectRef) -> str:
        return f"/v1/virtual-labs/{project.virtual_lab_id}/projects/{project.project_id}/runs"

    def post(self, project: ProjectRef, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(self.runs_url(project), json=body, headers=self.login(project))
        assert response.status_code == 202, response.text
        run: dict[str, Any] = response.json()
        self.tags.append(f"obp-{run['run_id']}")
        return run

    def get(self, project: ProjectRef, run_id: str) -> dict[str, Any]:
        response = self.client.get(
            f"{self.runs_url(project)}/{run_id}", headers=self.login(project)
        )
        assert response.status_code == 200, response.text
        run: dict[str, Any] = response.json()
        return run

    def cancel(self, project: ProjectRef, run_id: str) -> dict[str, Any]:
        response = self.client.post(
            f"{self.runs_url(project)}/{run_id}/cancel",
            json={"reason": "changed my mind"},
            headers=self.login(project),
        )
        assert response.status_code == 202, response.text
        run: dict[str, Any] = response.json()
        return run

    def log(self, project: ProjectRef, run_id: str) -> str:
        response = self.client.get(
            f"{self.runs_url(project)}/{run_id}/log", headers=self.login(project)
        )
        assert response.status_code == 200, response.text
        return str(response.json()["text"])

    def wait_for(
        self,
        worker: WorkerProcess,
        project: ProjectRef,
        run_id: str,
        done: Callable[[dict[str, Any]], bool],
        timeout: float = 90,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.get(project, run_id)
            if done(run):
                return run
            if time.monotonic() > deadline or worker.process.poll() is not None:
                story = "\n  ".join(f"{e['to_state']}: {e['reason']}" for e in run["timeline"][-8:])
                raise AssertionError(
                    f"run {run_id} is {run['state']} after {timeout:.0f} s:\n  {story}\n"
                    f"worker (exit {worker.process.poll()}):\n{worker.tail()}"
                )
            time.sleep(0.25)

    # ---------------------------------------------------------------- the instance on ECS

    @staticmethod
    def instances(project: ProjectRef) -> int:
        """The project's live tasks on ECS."""
        ecs = aws_client("ecs")
        return len(ecs.list_tasks(cluster=ECS_CLUSTER, startedBy=project.key)["taskArns"])

    def instance_environment(self, project: ProjectRef) -> dict[str, str]:
        """The environment ECS starts the project's task with: the task definition's
        container environment, overridden by the RunTask's container overrides."""
        ecs = aws_client("ecs")
        arns = ecs.list_tasks(cluster=ECS_CLUSTER, startedBy=project.key)["taskArns"]
        assert len(arns) == 1, f"the project has {len(arns)} instances"
        (task,) = ecs.describe_tasks(cluster=ECS_CLUSTER, tasks=arns)["tasks"]
        (definition,) = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])[
            "taskDefinition"
        ]["containerDefinitions"]
        (overrides,) = [
            o for o in task["overrides"]["containerOverrides"] if o["name"] == definition["name"]
        ]
        environment = {e["name"]: e["value"] for e in definition.get("environment", [])}
        environment.update({e["name"]: e["value"] for e in overrides.get("environment", [])})
        return environment

    @contextmanager
    def worker(self, project: ProjectRef, **settings: str) -> Iterator[WorkerProcess]:
        """The project's workflow instance as ECS starts it (with ``settings`` on top, e.g.
        ``OBP_SUBMIT_LEASE_SECONDS``); SIGTERM at the end: exit 0."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
        environment = self.instance_environment(project) | settings
        assert environment["OBP_VIRTUAL_LAB_ID"] == project.virtual_lab_id
        assert environment["OBP_PROJECT_ID"] == project.project_id
        log = self.logs / f"worker-{project.project_id}.log"
        with log.open("w") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "obp_workflow.entrypoints.cli", "worker"],
                # Every line the service writes, to look for secrets in them afterwards.
                env={**base, **environment, "OBP_LOG_LEVEL": "DEBUG"},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        worker = WorkerProcess(process, log)
        try:
            yield worker
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                status = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                status = None
        assert status == 0, f"the worker exited with {status}:\n{worker.tail()}"
        self.assert_no_secret_in(worker.log.read_text(errors="replace"))

    def assert_no_secret_in(self, text: str) -> None:
        """A whole run's log lines hold no key and no token: not the SSH keys the worker read,
        not the service's client secret, not a caller's token, no JWT at all."""
        lines = text.splitlines()
        assert lines, "the worker wrote no line"
        for line in lines:
            json.loads(line)  # one JSON object per line, nothing else (no stray traceback)
        secrets = [CLIENT_SECRET, *self.tokens.values()]
        for role in ("sim", "admin"):
            key = stack().private_key(role)
            secrets += [part for part in key.split() if len(part) > 16 and "PRIVATE" not in part]
        for secret in secrets:
            assert secret not in text
        assert "PRIVATE KEY" not in text
        assert re.search(r"eyJ[\w-]{8,}\.[\w-]{8,}\.", text) is None


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def put_secret(name: str, value: str) -> str:
    """Create or update a secret on moto; its ARN."""
    secrets = aws_client("secretsmanager")
    try:
        return str(secrets.create_secret(Name=name, SecretString=value)["ARN"])
    except secrets.exceptions.ResourceExistsException:
        return str(secrets.put_secret_value(SecretId=name, SecretString=value)["ARN"])


def write_lfs_conf(text: str) -> None:
    """Replace the lfs emulator's configuration at once (sync jobs read it as obpadmin)."""
    partial = LFS_CONF.with_name(f"{LFS_CONF.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    partial.chmod(0o644)
    partial.replace(LFS_CONF)


def key_pair_secret(name: str) -> str:
    """What the provisioner does with a cluster's key pair: the private key kept in Secrets
    Manager under the key pair's name (``{cluster}_sim`` for the user, ``{cluster}`` for the
    admin); the ARN goes into its answer. Here both are the stack's users' keys."""
    role = "sim" if name.endswith("_sim") else "admin"
    return put_secret(name, stack().private_key(role))


def ecs_network() -> tuple[str, str]:
    ec2 = aws_client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.43.0.0/16")["Vpc"]["VpcId"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto needs it
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.43.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(
        GroupName="obp-e2e-instances", Description="workflow instances", VpcId=vpc
    )["GroupId"]
    return subnet, group


def deployment(
    *,
    moto_endpoint: str,
    subnet: str,
    group: str,
    provisioner: ProvisionerServer,
    realm: KeycloakIssuer,
    nexus: NexusServer,
    mount: str,
) -> dict[str, str]:
    """The deployment's settings, as the task definition carries them (and the API too)."""
    st = stack()
    return {
        "OBP_ADAPTERS": "aws",
        "OBP_AWS_ENDPOINT_URL": moto_endpoint,
        "OBP_RUNS_TABLE": RUNS_TABLE,
        "OBP_ECS_CLUSTER": ECS_CLUSTER,
        "OBP_ECS_TASK_DEFINITION": FAMILY,
        "OBP_ECS_CONTAINER_NAME": CONTAINER,
        "OBP_ECS_SUBNETS": subnet,
        "OBP_ECS_SECURITY_GROUPS": group,
        "OBP_PROVISIONER_URL": provisioner.url,
        "OBP_PROVISIONER_SSH_PORT": str(st.port),
        "OBP_PROVISIONER_SSH_USER": st.user("sim"),
        "OBP_PROVISIONER_ADMIN_USER": st.user("admin"),
        "OBP_CLUSTER_PARTITION": st.partition,
        "OBP_LUSTRE_MOUNT": mount,
        "OBP_LUSTRE_DRA_PATH": DRA_PATH,
        "OBP_LUSTRE_BUCKET": BUCKET,
        "OBP_LUSTRE_PREFIX": PREFIX,
        "OBP_SHARED_PATH": str(Path(st.home("sim")).parent),
        "OBP_HSM_JOBS_ROOT": f"{st.home('admin')}/obp-sync",
        "OBP_HSM_WAIT_SECONDS": "60",
        "OBP_HSM_POLL_SECONDS": "0.5",
        "OBP_KEYCLOAK_ISSUER": realm.issuer,
        "OBP_KEYCLOAK_AUDIENCES": "account",
        "OBP_SERVICE_CLIENT_ID": SERVICE_CLIENT,
        "OBP_SERVICE_CLIENT_SECRET_ID": CLIENT_SECRET_ID,
        "OBP_NEXUS_ENDPOINT": nexus.endpoint,
        "OBP_NEXUS_PUBLIC_BASE": nexus.base,
        "OBP_NEXUS_REALM": realm.realm,
        "OBP_NEXUS_S3_STORAGE": S3_STORAGE,
        "OBP_WORKER_POLL_SECONDS": "0.2",
        "OBP_WORKER_PROVISIONING_POLL_SECONDS": "0.2",
        "OBP_WORKER_SWEEP_SECONDS": "5",
        "OBP_LUIGID_PORT": "0",  # other workers and sessions share this machine
        "OBP_SSH_QUERIES_PER_MINUTE": "3000",  # a squeue every 0.2 s, and then some
        "OBP_LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="module", name="world")
def world_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    moto = fresh_moto()  # ECS tasks stay in the status they are started in
    # The signing credentials of the test process and of the workers (the task role's).
    credentials = botocore.session.get_session().get_credentials()
    assert credentials is not None
    frozen = credentials.get_frozen_credentials()
    s3 = aws_client("s3")
    s3.create_bucket(Bucket=BUCKET)
    conf_before = LFS_CONF.read_text()
    conf = lfs_conf()  # the stack's lfs emulator archives the DRA into this module's bucket
    conf["associations"] = [
        {"path": DRA_PATH, "bucket": BUCKET, "prefix": PREFIX, "endpoint": moto.endpoint}
    ]
    write_lfs_conf(json.dumps(conf, indent=2))
    create_table(aws_client("dynamodb"), RUNS_TABLE)
    put_secret(CLIENT_SECRET_ID, CLIENT_SECRET)
    subnet, group = ecs_network()
    realm = KeycloakIssuer()
    realm.add_client(SERVICE_CLIENT, CLIENT_SECRET, lifetime=600)

    def authenticate(token: str) -> str | None:
        claims = realm.check(token)
        return None if claims is None else f"{NEXUS_PUBLIC}/realms/obp/users/{claims['sub']}"

    nexus = NexusServer(
        base_uri=NEXUS_PUBLIC, tokens=authenticate, s3=s3, s3_storages={S3_STORAGE: BUCKET}
    ).start()
    provisioner = ProvisionerServer(
        credentials=Credentials(frozen.access_key, frozen.secret_key, frozen.token),
        ssh_user=stack().user("sim"),
        head_node_address=stack().host,
        key_arn=key_pair_secret,
    ).start()
    settings = deployment(
        moto_endpoint=moto.endpoint,
        subnet=subnet,
        group=group,
        provisioner=provisioner,
        realm=realm,
        nexus=nexus,
        mount=str(conf["mount_path"]),
    )
    ecs = aws_client("ecs")
    ecs.create_cluster(clusterName=ECS_CLUSTER)
    ecs.register_task_definition(
        family=FAMILY,
        networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="1024",
        memory="2048",
        containerDefinitions=[
            {
                "name": CONTAINER,
                "image": "obp/workflow:e2e",
                "command": ["obp-workflow", "worker"],
                "memory": 2048,
                "essential": True,
                "environment": [{"name": k, "value": v} for k, v in settings.items()],
            }
        ],
    )
    container = build(
        load_settings(**{k.removeprefix("OBP_").lower(): v for k, v in settings.items()})
    )
    gateway = make_server("127.0.0.1", 0, container)
    thread = threading.Thread(target=gateway.serve_forever, daemon=True)
    thread.start()
    logs = tmp_path_factory.mktemp("workers")  # each worker's log (pytest keeps the last few)
    client = httpx.Client(base_url=gateway.url, timeout=30)
    world = World(
        gateway=gateway,
        client=client,
        container=container,
        realm=realm,
        nexus=nexus,
        provisioner=provisioner,
        graph=container.knowledge_graph(),
        logs=logs,
    )
    try:
        yield world
    finally:
        for tag in world.tags:  # nothing of ours left on the cluster, whatever happened
            slurm("scancel", f"--name={tag}", check=False)
            for attempt in (1, 2, 3):
                slurm("scancel", f"--name={tag}-sync-{attempt}", check=False)
        client.close()
        gateway.shutdown()
        gateway.server_close()
        provisioner.stop()
        nexus.stop()
        realm.close()
        write_lfs_conf(conf_before)


# ==================================================================== what the peers say


def stored_in_dynamodb(project: ProjectRef, run_id: str) -> str:
    """The state of the run's item in the runs table, read behind the service's back."""
    item = aws_client("dynamodb").get_item(
        TableName=RUNS_TABLE,
        Key={"pk": {"S": project.key}, "sk": {"S": RUN_PREFIX + run_id}},
    )["Item"]
    return str(item["state"]["S"])


# ==================================================================== the tests


def test_a_run_on_a_cluster_with_lustre_ends_archived_linked_and_registered(world: World) -> None:
    project = world.new_project(lustre=True)
    posted = world.post(project, writes(OUTPUTS))
    run_id = posted["run_id"]
    assert posted["state"] == "ACCEPTED"
    assert stored_in_dynamodb(project, run_id) == "ACCEPTED"

    with world.worker(project) as worker:
        run = world.wait_for(worker, project, run_id, lambda r: r["terminal"])

    assert run["state"] == "DONE", run["failure_reason"]
    assert transitions(run) == LIFECYCLE
    assert all(e["reason"] for e in run["timeline"])
    assert stored_in_dynamodb(project, run_id) == "DONE"
    tag = f"obp-{run_id}"
    job_id = run["job"]["job_id"]
    assert run["job"]["cluster_name"] == cluster_name(project.virtual_lab_id, project.project_id)
    assert run["job"]["exit_code"] == 0
    assert tagged_ids(tag) == {job_id}  # one Slurm job for the run
    assert accounted(job_id, tag) == ("COMPLETED", stack().user("sim"))
    # The elevated HSM job, as the admin login.
    sync = run["sync"]
    assert sync["kind"] == "lustre-hsm"
    assert sync["outcome"] == "confirmed"
    assert sync["job_id"] is not None
    assert accounted(sync["job_id"], f"{tag}-sync-1") == ("COMPLETED", stack().user("admin"))
    # S3: each output archived into the Nexus data bucket, byte for byte.
    runs_root = f"{project.virtual_lab_id}/{project.project_id}/runs/{run_id}"
    files = {f["path"]: f for f in sync["files"]}
    assert sorted(files) == sorted(OUTPUTS)
    s3 = aws_client("s3")
    for path in OUTPUTS:
        key = f"{PREFIX}/{runs_root}/{path}"
        assert files[path]["location"] == f"s3://{BUCKET}/{key}"
        assert files[path]["size"] == len(content_of(run_id, path))
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == content_of(run_id, path)
        # Nexus: the object linked as the run's file, not uploaded.
        stored = world.nexus.entry(world.graph.file_id(project, run_id, path))
        assert stored is not None
        assert (stored.current.origin, stored.current.location) == ("Link", key)
    # Nexus: the activity and one entity per output, with the ids the GET shows.
    graph = run["knowledge_graph"]
    assert graph["activity_id"] == world.graph.activity_id(project, run_id)
    activity = world.nexus.source(graph["activity_id"])
    assert activity is not None
    assert activity["jobId"] == job_id
    assert activity["syncKind"] == "lustre-hsm"
    assert activity["slurmAccounting"]["state"] == "COMPLETED"
    assert sorted(graph["entity_ids"]) == sorted(activity["generated"])
    for entity_id in graph["entity_ids"]:
        entity = world.nexus.source(entity_id)
        assert entity is not None
        assert entity["distribution"]["atLocation"]["location"].startswith(f"s3://{BUCKET}/")


def test_a_run_on_a_cluster_without_lustre_ends_uploaded_into_nexus(world: World) -> None:
    project = world.new_project(lustre=False)
    run_id = world.post(project, writes(OUTPUTS))["run_id"]

    with world.worker(project) as worker:
        run = world.wait_for(worker, project, run_id, lambda r: r["terminal"])

    assert run["state"] == "DONE", run["failure_reason"]
    assert transitions(run) == LIFECYCLE
    tag = f"obp-{run_id}"
    assert tagged_ids(tag) == {run["job"]["job_id"]}
    assert accounted(run["job"]["job_id"], tag) == ("COMPLETED", stack().user("sim"))
    sync = run["sync"]
    assert sync["kind"] == "nexus-upload"
    assert sync["job_id"] is None  # no elevated job without Lustre
    assert tagged_ids(f"{tag}-sync-1") == set()
    assert sorted(f["path"] for f in sync["files"]) == sorted(OUTPUTS)
    for path in OUTPUTS:
        file_id = world.graph.file_id(project, run_id, path)
        assert world.nexus.file_content(file_id) == content_of(run_id, path)
        stored = world.nexus.entry(file_id)
        assert stored is not None
        assert stored.current.origin == "Client"  # uploaded
    activity = world.nexus.source(run["knowledge_graph"]["activity_id"])
    assert activity is not None
    assert activity["syncKind"] == "nexus-upload"
    assert len(run["knowledge_graph"]["entity_ids"]) == len(OUTPUTS)


def test_a_failing_job_fails_the_run_with_its_exit_code_and_its_log_is_readable(
    world: World,
) -> None:
    project = world.new_project(lustre=False)
    script = 'echo "loading the circuit"; sleep 1; echo "the circuit would not load" >&2; exit 3'
    body = {"command": ["bash", "-c", script], "resources": {"time_limit_minutes": 5}}
    run_id = world.post(project, body)["run_id"]

    with world.worker(project) as worker:
        run = world.wait_for(worker, project, run_id, lambda r: r["terminal"])

    assert run["state"] == "FAILED"
    assert transitions(run) == [*LIFECYCLE[:5], "FAILED"]
    assert run["job"]["exit_code"] == 3
    assert run["failure_reason"] == "the job failed (exit code 3)"
    assert "FAILED" in run["scheduler_raw"]
    tag = f"obp-{run_id}"
    assert tagged_ids(tag) == {run["job"]["job_id"]}
    assert accounted(run["job"]["job_id"], tag) == ("FAILED", stack().user("sim"))
    assert run["sync"]["kind"] is None
    assert run["knowledge_graph"]["activity_id"] is None
    assert world.nexus.source(world.graph.activity_id(project, run_id)) is None
    # The job's log, read from the cluster by the API itself.
    log = world.log(project, run_id)
    assert "loading the circuit\n" in log
    assert log.endswith("the circuit would not load\n")


def long_job(cpus: int = 1) -> dict[str, Any]:
    return {
        "name": "long",
        "command": ["sleep", "600"],
        "resources": {"time_limit_minutes": 15, "cpus_per_task": cpus},
    }


def squeue(job_id: str) -> str:
    """``STATE REASON`` of a job the controller holds."""
    return slurm("squeue", "--noheader", f"--jobs={job_id}", "--format=%T %r", check=False).strip()


def test_cancels_while_queued_and_while_running_cancel_the_slurm_jobs(world: World) -> None:
    project = world.new_project(lustre=False)
    cpus = int(stack().raw["slurm"]["cpus"])
    running_id = world.post(project, long_job())["run_id"]

    with world.worker(project) as worker:
        world.wait_for(worker, project, running_id, lambda r: r["state"] == "RUNNING")
        # Every CPU of the node, while one is taken: the scheduler keeps the job waiting.
        queued_id = world.post(project, long_job(cpus))["run_id"]
        queued = world.wait_for(
            worker, project, queued_id, lambda r: r["state"] == "QUEUED" and r["job"]["job_id"]
        )
        queued_job = queued["job"]["job_id"]
        wait_until(
            lambda: squeue(queued_job) == "PENDING Resources", 10, f"job {queued_job} to wait"
        )
        world.cancel(project, queued_id)
        queued = world.wait_for(worker, project, queued_id, lambda r: r["terminal"])
        running_job = world.get(project, running_id)["job"]["job_id"]
        assert squeue(running_job).startswith("RUNNING")
        world.cancel(project, running_id)
        running = world.wait_for(worker, project, running_id, lambda r: r["terminal"])

    for run, job_id, live in ((queued, queued_job, "QUEUED"), (running, running_job, "RUNNING")):
        assert run["state"] == "CANCELLED"
        assert transitions(run)[-3:] == [live, "CANCELLING", "CANCELLED"]
        assert run["cancelled_by"]
        tag = f"obp-{run['run_id']}"
        assert tagged_ids(tag) == {job_id}
        state, user = accounted(job_id, tag)
        assert state.startswith("CANCELLED"), state  # "CANCELLED by <uid>"
        assert user == stack().user("sim")


def test_a_job_past_its_time_limit_times_out(world: World) -> None:
    project = world.new_project(lustre=False)
    body = {"command": ["sleep", "600"], "resources": {"time_limit_minutes": 1}}  # Slurm's least
    run_id = world.post(project, body)["run_id"]

    with world.worker(project) as worker:
        # A limit of 1 minute ends a job 60-95 s in: slurmctld checks limits every 30 s.
        run = world.wait_for(worker, project, run_id, lambda r: r["terminal"], timeout=150)

    assert run["state"] == "FAILED"
    assert transitions(run) == [*LIFECYCLE[:5], "FAILED"]
    assert run["failure_reason"].startswith("the job reached its time limit")
    assert "TIMEOUT" in run["scheduler_raw"]
    tag = f"obp-{run_id}"
    assert accounted(run["job"]["job_id"], tag) == ("TIMEOUT", stack().user("sim"))


def test_a_cluster_that_cannot_be_created_fails_the_run_with_the_reason(world: World) -> None:
    project = world.new_project(lustre=True)
    reason = "HeadNodeWaitCondition timed out: the head node did not signal in time"
    world.provisioner.fail_next_creation(project.virtual_lab_id, project.project_id, reason)
    run_id = world.post(project, writes(OUTPUTS))["run_id"]

    with world.worker(project) as worker:
        run = world.wait_for(worker, project, run_id, lambda r: r["terminal"])

    assert run["state"] == "FAILED"
    assert transitions(run) == ["ACCEPTED", "PROVISIONING", "FAILED"]
    failure = run["failure_reason"]
    assert failure.startswith("the project's cluster could not be created: CREATE_FAILED"), failure
    assert reason in failure
    assert run["job"]["job_id"] is None
    assert tagged_ids(f"obp-{run_id}") == set()  # nothing reached the scheduler


def test_twenty_runs_at_once_in_one_project_each_end_done_with_one_job(world: World) -> None:
    project = world.new_project(lustre=False)
    with ThreadPoolExecutor(max_workers=10) as pool:
        posted = list(
            pool.map(lambda n: world.post(project, writes([f"out/{n}.dat"], 1)), range(20))
        )
    run_ids = [r["run_id"] for r in posted]
    assert len(set(run_ids)) == 20
    assert world.instances(project) == 1

    with world.worker(project) as worker:  # one instance for the project (asserted there)
        runs = [
            world.wait_for(worker, project, run_id, lambda r: r["terminal"], timeout=180)
            for run_id in run_ids
        ]

    assert [r["state"] for r in runs] == ["DONE"] * 20, [r["failure_reason"] for r in runs]
    job_ids = [r["job"]["job_id"] for r in runs]
    assert len(set(job_ids)) == 20
    for n, run in enumerate(runs):
        assert tagged_ids(f"obp-{run['run_id']}") == {run["job"]["job_id"]}
        file_id = world.graph.file_id(project, run["run_id"], f"out/{n}.dat")
        assert world.nexus.file_content(file_id) == content_of(run["run_id"], f"out/{n}.dat")
    listed = world.client.get(
        world.runs_url(project), params={"state": "DONE", "limit": 50}, headers=world.login(project)
    )
    assert listed.status_code == 200
    assert sorted(r["run_id"] for r in listed.json()["runs"]) == sorted(run_ids)
