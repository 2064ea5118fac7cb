"""The composition root with OBP_ADAPTERS=aws, against a real moto server: the settings select
the production adapters, and a submitted run lands in DynamoDB and starts one ECS task."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from obp_workflow.adapters.aws.dynamodb import DynamoRunRepository, create_table
from obp_workflow.adapters.aws.ecs import EcsInstances
from obp_workflow.adapters.keycloak.verifier import KeycloakTokenVerifier
from obp_workflow.adapters.local.unwired import Unwired
from obp_workflow.adapters.provisioner.http import HttpProvisioner
from obp_workflow.adapters.ssh.slurm import SlurmGateway
from obp_workflow.core.errors import ServiceUnavailable
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState
from obp_workflow.entrypoints.bootstrap import Service, build
from obp_workflow.entrypoints.settings import load_settings
from tests.contract.harness_aws import EcsInstancesHarness, aws_client, moto

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = ProjectRef.parse(VLAB, "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20")
ADA = Principal("subject-ada", "ada", parse_groups([f"/proj/{VLAB}/{PROJECT.project_id}/member"]))


@pytest.fixture
def aws_service() -> Iterator[Service]:
    ecs = EcsInstancesHarness()  # a moto ECS cluster, task definition, VPC, subnet and group
    try:
        create_table(aws_client("dynamodb"), "obp-runs")
        settings = load_settings(
            adapters="aws",
            aws_endpoint_url=moto().endpoint,
            runs_table="obp-runs",
            ecs_cluster=ecs.config.cluster,
            ecs_task_definition=ecs.config.task_definition,
            ecs_container_name=ecs.config.container_name,
            ecs_subnets=",".join(ecs.config.subnets),
            ecs_security_groups=",".join(ecs.config.security_groups),
            provisioner_url="https://provisioner.invalid/production",
            lustre_bucket="nexus-data",
            keycloak_issuer="https://keycloak.invalid/realms/obp",
            keycloak_audiences="account",
        )
        yield build(settings)
    finally:
        ecs.close()


def test_the_aws_settings_select_the_production_adapters(aws_service: Service) -> None:
    assert isinstance(aws_service.runs(), DynamoRunRepository)
    assert isinstance(aws_service.instances(), EcsInstances)
    assert isinstance(aws_service.provisioner(), HttpProvisioner)
    assert isinstance(aws_service.gateway(), SlurmGateway)
    assert isinstance(aws_service.tokens(), KeycloakTokenVerifier)
    # Not yet production adapters: they refuse, they do not pretend.
    for unwired in (aws_service.knowledge_graph(), aws_service.synchronizer()):
        assert isinstance(unwired, Unwired)


def test_a_run_submitted_on_aws_is_stored_and_starts_one_instance(aws_service: Service) -> None:
    service = aws_service.workflow()
    request = SimulationRequest.parse({"command": ["run-sim"]})
    run = service.submit(ADA, PROJECT, request, idempotency_key="k-1")
    again = service.submit(ADA, PROJECT, request, idempotency_key="k-1")
    assert again.run_id == run.run_id
    stored = service.runs.get(PROJECT, run.run_id)
    assert stored.state is RunState.ACCEPTED
    ecs = aws_client("ecs")
    tasks = ecs.list_tasks(cluster=aws_service.settings().ecs_cluster, startedBy=PROJECT.key)
    assert len(tasks["taskArns"]) == 1


def test_registration_is_refused_until_wired(aws_service: Service) -> None:
    with pytest.raises(ServiceUnavailable, match="not configured"):
        aws_service.knowledge_graph().withdraw(None)  # type: ignore[arg-type]
