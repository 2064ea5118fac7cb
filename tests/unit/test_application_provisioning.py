"""Runs waiting for their cluster: the provisioner's status and reason are on the run, and a
failure or a time-out fails the run with the reason."""

from __future__ import annotations

from datetime import timedelta

import pytest

from obp_workflow.adapters.fake.clock import FakeClock
from obp_workflow.adapters.fake.cluster_gateway import FakeClusterGateway
from obp_workflow.adapters.fake.cluster_provisioner import FakeClusterProvisioner
from obp_workflow.adapters.fake.data_synchronizer import FakeDataSynchronizer
from obp_workflow.adapters.fake.event_publisher import FakeEventPublisher
from obp_workflow.adapters.fake.id_generator import FakeIdGenerator
from obp_workflow.adapters.fake.instance_orchestrator import FakeInstanceOrchestrator
from obp_workflow.adapters.fake.knowledge_graph import FakeKnowledgeGraph
from obp_workflow.adapters.fake.object_store import FakeObjectStore
from obp_workflow.adapters.fake.run_repository import FakeRunRepository
from obp_workflow.application.policy import ServicePolicy
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState, SimulationRun
from tests.application import Application, application

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = ProjectRef.parse(VLAB, "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20")
USER = Principal("subject-ada", "ada", parse_groups([f"/proj/{VLAB}/{PROJECT.project_id}/member"]))
REQUEST = SimulationRequest.parse({"command": ["run-sim"]})


class World:
    def __init__(self, ready_after: int) -> None:
        self.clock = FakeClock()
        self.provisioner = FakeClusterProvisioner(ready_after=ready_after)
        cluster = FakeClusterGateway()
        objects = FakeObjectStore()
        graph = FakeKnowledgeGraph(objects)
        self.app: Application = application(
            run_repository=FakeRunRepository(),
            cluster_provisioner=self.provisioner,
            cluster_gateway=cluster,
            data_synchronizer=FakeDataSynchronizer(cluster, objects, graph),
            knowledge_graph=graph,
            instance_orchestrator=FakeInstanceOrchestrator(self.clock),
            clock=self.clock,
            id_generator=FakeIdGenerator(),
            event_publisher=FakeEventPublisher(),
            policy=ServicePolicy(provisioning_timeout=timedelta(minutes=30)),
        )

    def step(self, run: SimulationRun) -> SimulationRun:
        self.app.pipeline.advance(PROJECT, run.run_id)
        return self.app.run_repository.get(PROJECT, run.run_id)


def test_the_provisioners_status_is_on_the_waiting_run_once_per_change() -> None:
    world = World(ready_after=3)
    run = world.app.requests.submit(USER, PROJECT, REQUEST)

    run = world.step(run)  # asks for the cluster
    assert run.state is RunState.PROVISIONING
    assert run.provisioning_status == "in-progress: CREATE_IN_PROGRESS"
    events = len(run.events)
    run = world.step(run)  # the same answer: nothing new on the run
    assert len(run.events) == events
    for _ in range(10):
        if run.state is not RunState.PROVISIONING:
            break
        run = world.step(run)
    assert run.state is RunState.SUBMITTING
    assert [e.kind for e in run.events].count("provisioning-status") == 1


def test_a_failed_creation_fails_the_run_with_the_provisioners_reason() -> None:
    world = World(ready_after=2)
    world.provisioner.fail_creation(PROJECT, "CREATE_FAILED: InsufficientInstanceCapacity")
    run = world.step(world.app.requests.submit(USER, PROJECT, REQUEST))

    assert run.state is RunState.FAILED
    assert run.failure_reason == (
        "the project's cluster could not be created: CREATE_FAILED: InsufficientInstanceCapacity"
    )


@pytest.mark.parametrize("minutes", [29, 31])
def test_a_cluster_not_ready_in_time_fails_the_run_with_its_last_status(minutes: int) -> None:
    world = World(ready_after=1000)
    run = world.step(world.app.requests.submit(USER, PROJECT, REQUEST))
    world.clock.advance(minutes * 60)

    run = world.step(run)

    if minutes < 30:
        assert run.state is RunState.PROVISIONING
    else:
        assert run.state is RunState.FAILED
        assert run.failure_reason == (
            "the project's cluster was not ready after 30 minutes (last status: CREATE_IN_PROGRESS)"
        )
