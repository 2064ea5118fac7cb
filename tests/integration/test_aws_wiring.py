"""The composition root with OBP_ADAPTERS=aws, against a real moto server: the settings select
the production adapters, a submitted run lands in DynamoDB and starts one ECS task, and the
knowledge graph registers with the service's own token (client credentials from the test
Keycloak realm, the client secret in moto's Secrets Manager) on the Nexus test server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta

import pytest

from obp_workflow.adapters.aws.dynamodb import DynamoRunRepository, create_table
from obp_workflow.adapters.aws.ecs import EcsInstanceOrchestrator
from obp_workflow.adapters.keycloak.verifier import KeycloakTokenVerifier
from obp_workflow.adapters.nexus.graph import NexusKnowledgeGraph
from obp_workflow.adapters.nexus.upload import NexusUploadSynchronizer
from obp_workflow.adapters.provisioner.http import HttpClusterProvisioner
from obp_workflow.adapters.ssh.slurm import SlurmClusterGateway
from obp_workflow.adapters.sync.lustre_hsm import LustreHsmSynchronizer
from obp_workflow.adapters.sync.router import SyncRouter
from obp_workflow.core.cluster import AcceptNewHostKey, SecretRef
from obp_workflow.core.errors import SecretNotFound
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState
from obp_workflow.core.sync import SyncedFile, SyncOutcome
from obp_workflow.entrypoints.composition.root import Service, build
from obp_workflow.entrypoints.composition.settings import SettingsError, load_settings
from obp_workflow.ports.knowledge_graph import RunProvenance
from tests.contract.harness import T0, make_header
from tests.contract.harness_aws import EcsInstanceOrchestratorHarness, aws_client, moto
from tests.keycloak_issuer import KeycloakIssuer
from tests.nexus_server import NexusServer

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = ProjectRef.parse(VLAB, "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20")
ADA = Principal("subject-ada", "ada", parse_groups([f"/proj/{VLAB}/{PROJECT.project_id}/member"]))


SERVICE_CLIENT = "obp-workflow-service"
CLIENT_SECRET = "wiring-test-client-secret-5b9e"  # a test credential
NEXUS_PUBLIC = "https://nexus.wiring.test/v1"


@pytest.fixture
def realm() -> Iterator[KeycloakIssuer]:
    with KeycloakIssuer() as issuer:
        issuer.add_client(SERVICE_CLIENT, CLIENT_SECRET)
        yield issuer


@pytest.fixture
def nexus(realm: KeycloakIssuer) -> Iterator[NexusServer]:
    def authenticate(token: str) -> str | None:
        claims = realm.check(token)
        return None if claims is None else f"{NEXUS_PUBLIC}/realms/obp/users/{claims['sub']}"

    server = NexusServer(base_uri=NEXUS_PUBLIC, tokens=authenticate).start()
    try:
        yield server
    finally:
        server.stop()


def aws_settings(realm: KeycloakIssuer, nexus: NexusServer) -> dict[str, object]:
    """Every setting the aws family needs but ECS's (the harness makes those)."""
    return {
        "adapters": "aws",
        "aws_endpoint_url": moto().endpoint,
        "runs_table": "obp-runs",
        "provisioner_url": "https://provisioner.invalid/production",
        "lustre_bucket": "nexus-data",
        "keycloak_issuer": realm.issuer,
        "keycloak_audiences": "account",
        "service_client_id": SERVICE_CLIENT,
        "service_client_secret_id": "obp/workflow-client",
        "nexus_endpoint": nexus.endpoint,
        "nexus_public_base": nexus.base,
        "nexus_realm": "obp",
        "hsm_jobs_root": "/home/obpadmin/obp-sync",
        "ssh_connects_per_minute": 3,
    }


@pytest.fixture
def aws_service(realm: KeycloakIssuer, nexus: NexusServer) -> Iterator[Service]:
    ecs = (
        EcsInstanceOrchestratorHarness()
    )  # a moto ECS cluster, task definition, VPC, subnet and group
    try:
        create_table(aws_client("dynamodb"), "obp-runs")
        secrets = aws_client("secretsmanager")
        try:
            secrets.create_secret(Name="obp/workflow-client", SecretString=CLIENT_SECRET)
        except secrets.exceptions.ResourceExistsException:
            secrets.put_secret_value(SecretId="obp/workflow-client", SecretString=CLIENT_SECRET)
        settings = load_settings(
            **aws_settings(realm, nexus),
            ecs_cluster=ecs.config.cluster,
            ecs_task_definition=ecs.config.task_definition,
            ecs_container_name=ecs.config.container_name,
            ecs_subnets=",".join(ecs.config.subnets),
            ecs_security_groups=",".join(ecs.config.security_groups),
        )
        yield build(settings)
    finally:
        ecs.close()


def test_the_aws_settings_select_the_production_adapters(aws_service: Service) -> None:
    assert isinstance(aws_service.run_repository(), DynamoRunRepository)
    assert isinstance(aws_service.instance_orchestrator(), EcsInstanceOrchestrator)
    assert isinstance(aws_service.cluster_provisioner(), HttpClusterProvisioner)
    assert isinstance(aws_service.cluster_gateway(), SlurmClusterGateway)
    assert isinstance(aws_service.token_verifier(), KeycloakTokenVerifier)
    graph = aws_service.knowledge_graph()
    assert isinstance(graph, NexusKnowledgeGraph)
    assert graph.settings.s3_storage_bucket == "nexus-data"  # the Lustre data bucket
    sync = aws_service.data_synchronizer()
    assert isinstance(sync, SyncRouter)
    assert isinstance(sync.lustre, LustreHsmSynchronizer)
    assert isinstance(sync.upload, NexusUploadSynchronizer)
    assert sync.upload.graph is graph
    pool = aws_service.cluster_gateway().pool
    assert pool.settings.connects_per_minute == 3  # OBP_SSH_CONNECTS_PER_MINUTE


def test_the_host_key_policy_reaches_the_provisioner(aws_service: Service) -> None:
    name = "pcluster-wired"
    pinned = aws_service.cluster_provisioner().host_key_for  # the default: pinned
    with pytest.raises(SecretNotFound, match=f"{name}-host-key"):
        pinned(name)
    settings = aws_service.settings().model_copy(
        update={"host_key_policy": "accept-new", "host_key_secret_template": "hk/{cluster_name}"}
    )
    accept_new = build(settings).cluster_provisioner().host_key_for
    assert accept_new(name) == AcceptNewHostKey(SecretRef(f"hk/{name}"))


def test_a_run_submitted_on_aws_is_stored_and_starts_one_instance(aws_service: Service) -> None:
    requests = aws_service.requests()
    request = SimulationRequest.parse({"command": ["run-sim"]})
    run = requests.submit(ADA, PROJECT, request, idempotency_key="k-1")
    again = requests.submit(ADA, PROJECT, request, idempotency_key="k-1")
    assert again.run_id == run.run_id
    stored = requests.run_repository.get(PROJECT, run.run_id)
    assert stored.state is RunState.ACCEPTED
    ecs = aws_client("ecs")
    tasks = ecs.list_tasks(cluster=aws_service.settings().ecs_cluster, startedBy=PROJECT.key)
    assert len(tasks["taskArns"]) == 1


def test_registration_goes_to_nexus_with_the_services_own_token(
    aws_service: Service, realm: KeycloakIssuer, nexus: NexusServer
) -> None:
    graph = aws_service.knowledge_graph()
    header = make_header(PROJECT)
    nexus.create_project(*graph.project_for(PROJECT))
    provenance = RunProvenance(
        header=header,
        cluster_name="pcluster-0b7e2d41",
        job_id="4242",
        started_at=T0,
        ended_at=T0 + timedelta(hours=1),
        outcome=SyncOutcome("nexus-upload", (SyncedFile("a.h5", 3, "s3://elsewhere/a.h5"),)),
    )
    registration = graph.register(provenance)
    assert nexus.source(registration.activity_id) is not None
    assert realm.requests["token"] == 1  # the client-credentials grant, once
    writers = {r.user for r in nexus.requests if r.status in (200, 201)}
    assert writers == {f"{NEXUS_PUBLIC}/realms/obp/users/{realm.service_account(SERVICE_CLIENT)}"}


def test_missing_aws_settings_are_named_all_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(adapters="aws", lustre_bucket="b")
    message = str(caught.value)
    for variable in (
        "OBP_RUNS_TABLE",
        "OBP_NEXUS_ENDPOINT",
        "OBP_SERVICE_CLIENT_ID",
        "OBP_SERVICE_CLIENT_SECRET_ID",
        "OBP_HSM_JOBS_ROOT",
    ):
        assert variable in message
    with pytest.raises(SettingsError, match=r"OBP_NEXUS_ENDPOINT: .*ending in /v1"):
        load_settings(nexus_endpoint="https://nexus.example.org/api")


API_COLD_CALLS = """
import json, sys
from obp_workflow.entrypoints.aws_lambda import api as lambda_api
vlab, project = sys.argv[1], sys.argv[2]
path = f"/v1/virtual-labs/{vlab}/projects/{project}/runs"
caller = {
    "subject": "cold-user", "username": "cold", "memberships": f"/proj/{vlab}/{project}/member"
}
def event(method, url, body=None):
    headers = {"Content-Type": "application/json"} if body else {}
    return {
        "resource": "/{proxy+}", "path": url, "httpMethod": method, "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "requestContext": {"authorizer": caller}, "body": body, "isBase64Encoded": False,
    }
posted = lambda_api.handler(event("POST", path, json.dumps({"command": ["true"]})), None)
assert posted["statusCode"] == 202, posted
run_id = json.loads(posted["body"])["run_id"]
got = lambda_api.handler(event("GET", f"{path}/{run_id}"), None)
assert got["statusCode"] == 200, got
assert json.loads(got["body"])["state"] == "ACCEPTED", got
outputs = lambda_api.handler(event("GET", f"{path}/{run_id}/outputs"), None)
assert outputs["statusCode"] == 200, outputs
assert json.loads(outputs["body"])["synced"] is False, outputs
print(json.dumps(sorted(sys.modules)))
provenance = lambda_api.handler(event("GET", f"{path}/{run_id}/provenance"), None)
assert provenance["statusCode"] == 404, provenance
assert "nothing registered" in json.loads(provenance["body"])["detail"], provenance
print(json.dumps(sorted(sys.modules)))
"""


def test_the_api_lambdas_first_post_and_get_on_aws_build_only_the_requests_side(
    aws_service: Service, nexus: NexusServer
) -> None:
    """A fresh interpreter, as a Lambda's cold start: the POST stores the run in DynamoDB and
    starts the ECS task, the GETs of the run and of its outputs read it back; none loads the
    cluster, Nexus or Luigi. Only a provenance request then loads the Nexus adapter (and asks
    Nexus, which holds nothing of the run)."""
    settings = aws_service.settings()
    nexus.create_project(*aws_service.knowledge_graph().project_for(PROJECT))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")} | {
        f"OBP_{name.upper()}": str(value)
        for name, value in settings.model_dump().items()
        if value is not None and not isinstance(value, bool)
    }
    out = subprocess.run(
        [sys.executable, "-c", API_COLD_CALLS, PROJECT.virtual_lab_id, PROJECT.project_id],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    modules, after_provenance = (set(json.loads(line)) for line in out.stdout.splitlines()[-2:])

    def loaded(*names: str, among: set[str] = modules) -> set[str]:
        return {m for m in among for n in names if m == n or m.startswith(n + ".")}

    assert loaded("obp_workflow.adapters.aws.dynamodb", "obp_workflow.adapters.aws.ecs")
    assert loaded("paramiko", "luigi") == set()
    assert (
        loaded(
            "obp_workflow.adapters.nexus",
            "obp_workflow.adapters.ssh",
            "obp_workflow.adapters.sync",
            "obp_workflow.adapters.provisioner",
            "obp_workflow.adapters.keycloak",
        )
        == set()
    )
    assert "obp_workflow.adapters.nexus.graph" in loaded(
        "obp_workflow.adapters.nexus", among=after_provenance
    )
    assert loaded("paramiko", "luigi", among=after_provenance) == set()
    ecs = aws_client("ecs")
    tasks = ecs.list_tasks(cluster=settings.ecs_cluster, startedBy=PROJECT.key)
    assert len(tasks["taskArns"]) == 1
