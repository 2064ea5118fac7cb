"""The static ClusterProvisioner beyond the contract every provisioner passes: READY before any
request, ``delete`` saying it left the cluster alone, and a run driven onto its cluster by the
pipeline."""

from __future__ import annotations

import logging

import pytest

from obp_workflow.adapters.fake.cluster_gateway import FakeClusterGateway
from obp_workflow.adapters.local.cluster_provisioner import StaticClusterProvisioner
from obp_workflow.core.cluster import ProvisioningPhase
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState
from obp_workflow.entrypoints.composition.root import build
from obp_workflow.entrypoints.composition.settings import load_settings
from tests.contract import test_cluster_provisioner_contract as contract
from tests.contract.harness import PROJECT_A, PROJECT_B
from tests.contract.harness_local_provisioner import static_cluster

READY = ProvisioningPhase.READY


def test_every_project_is_ready_at_once_on_the_one_cluster() -> None:
    cluster = static_cluster()
    provisioner = StaticClusterProvisioner(cluster)
    for project in (PROJECT_A, PROJECT_B):
        assert provisioner.describe(project).phase is READY  # before any request, too
        for status in (provisioner.request(project), provisioner.describe(project)):
            assert status.phase is READY
            assert status.cluster == cluster
    assert contract.assert_usable(provisioner.describe(PROJECT_A).cluster) == cluster


def test_request_is_idempotent_and_delete_leaves_the_cluster_saying_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provisioner = StaticClusterProvisioner(static_cluster())
    first = provisioner.request(PROJECT_A)
    assert [provisioner.request(PROJECT_A) for _ in range(3)] == [first] * 3
    with caplog.at_level(logging.INFO, logger="obp_workflow.adapters.local"):
        provisioner.delete(PROJECT_A)
        provisioner.delete(PROJECT_B)  # a project that never asked: not an error either
    assert provisioner.describe(PROJECT_A) == first
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2
    assert all("not deleted" in line and "local-slurm" in line for line in said)
    assert str(PROJECT_A) in said[0]


def test_the_pipeline_submits_a_run_on_the_static_cluster() -> None:
    gateway = FakeClusterGateway(auto_progress=True)
    cluster = static_cluster()
    container = build(
        load_settings(),
        cluster_gateway=gateway,
        cluster_provisioner=StaticClusterProvisioner(cluster),
    )
    project = ProjectRef.parse(PROJECT_A.virtual_lab_id, PROJECT_A.project_id)
    ada = Principal(
        "subject-ada",
        "ada",
        parse_groups([f"/proj/{project.virtual_lab_id}/{project.project_id}/member"]),
    )
    run = container.requests().submit(
        ada, project, SimulationRequest.parse({"command": ["run-sim"]})
    )
    pipeline = container.pipeline()
    for _ in range(3):
        pipeline.advance(project, run.run_id)
    moved = container.run_repository().get(project, run.run_id)
    assert moved.states()[:3] == [RunState.ACCEPTED, RunState.PROVISIONING, RunState.SUBMITTING]
    assert moved.state in (RunState.QUEUED, RunState.RUNNING)
    assert gateway.submitted_tags == [run.header.tag]
