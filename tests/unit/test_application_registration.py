"""Registration with the run's provenance, step by step, on the in-memory adapters: what the
scheduler's accounting adds, and what must never hold a registration back."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from obp_workflow.adapters.fake.clock import FakeClock
from obp_workflow.adapters.fake.cluster_gateway import FakeClusterGateway
from obp_workflow.adapters.fake.cluster_provisioner import (
    EXAMPLE_BUCKET,
    FakeClusterProvisioner,
    example_cluster,
)
from obp_workflow.adapters.fake.data_synchronizer import FakeDataSynchronizer
from obp_workflow.adapters.fake.event_publisher import FakeEventPublisher
from obp_workflow.adapters.fake.id_generator import FakeIdGenerator
from obp_workflow.adapters.fake.instance_orchestrator import FakeInstanceOrchestrator
from obp_workflow.adapters.fake.knowledge_graph import FakeKnowledgeGraph
from obp_workflow.adapters.fake.object_store import FakeObjectStore
from obp_workflow.adapters.fake.run_repository import FakeRunRepository
from obp_workflow.core.errors import ServiceUnavailable
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState, SimulationRun
from tests.application import Application, application

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = ProjectRef.parse(VLAB, "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20")
USER = Principal("subject-ada", "ada", parse_groups([f"/proj/{VLAB}/{PROJECT.project_id}/member"]))
REQUEST = SimulationRequest.parse(
    {"command": ["run-sim"], "outputs": ["out/a.h5"], "resources": {"nodes": 4}}
)


@dataclass
class World:
    service: Application
    cluster: FakeClusterGateway
    graph: FakeKnowledgeGraph
    bucket: FakeObjectStore

    def until(self, run: SimulationRun, state: RunState) -> SimulationRun:
        for _ in range(30):
            current = self.service.run_repository.get(run.project, run.run_id)
            if current.state is state:
                return current
            self.cluster.step()
            self.service.pipeline.sweep()
        raise AssertionError(f"run {run.run_id} never reached {state.value}")

    def activity(self, run: SimulationRun) -> dict[str, object]:
        assert run.kg_activity_id is not None
        return self.graph.resources[run.kg_activity_id][1]


@pytest.fixture
def world() -> World:
    clock = FakeClock()
    cluster = FakeClusterGateway()
    bucket = FakeObjectStore()
    graph = FakeKnowledgeGraph(bucket, EXAMPLE_BUCKET)
    service = application(
        run_repository=FakeRunRepository(),
        cluster_provisioner=FakeClusterProvisioner(ready_after=0, cluster_for=example_cluster),
        cluster_gateway=cluster,
        data_synchronizer=FakeDataSynchronizer(cluster, bucket, graph),
        knowledge_graph=graph,
        instance_orchestrator=FakeInstanceOrchestrator(clock),
        clock=clock,
        id_generator=FakeIdGenerator(),
        event_publisher=FakeEventPublisher(),
    )
    return World(service, cluster, graph, bucket)


def test_the_provenance_carries_the_schedulers_accounting_record(world: World) -> None:
    run = world.until(world.service.requests.submit(USER, PROJECT, REQUEST), RunState.DONE)
    accounting = world.activity(run)["accounting"]
    assert accounting == {"nodes": 4, "elapsed": 1, "exitCode": 0}


def test_a_cluster_gone_after_the_sync_does_not_hold_the_registration_back(world: World) -> None:
    run = world.until(world.service.requests.submit(USER, PROJECT, REQUEST), RunState.REGISTERING)
    world.cluster.unreachable = True
    world.service.pipeline.advance(run.project, run.run_id)
    done = world.service.run_repository.get(run.project, run.run_id)
    assert done.state is RunState.DONE
    assert world.activity(done)["accounting"] is None


def test_an_incomplete_accounting_record_is_waited_for(world: World) -> None:
    run = world.until(world.service.requests.submit(USER, PROJECT, REQUEST), RunState.REGISTERING)
    world.cluster.faults.fail_next("accounting", ServiceUnavailable("not complete yet"))
    world.service.pipeline.advance(run.project, run.run_id)
    assert world.service.run_repository.get(run.project, run.run_id).state is RunState.REGISTERING
    world.service.pipeline.advance(run.project, run.run_id)
    done = world.service.run_repository.get(run.project, run.run_id)
    assert done.state is RunState.DONE
    assert world.activity(done)["accounting"] == {"nodes": 4, "elapsed": 1, "exitCode": 0}


def test_a_registration_whose_reply_was_lost_is_withdrawn_when_the_run_then_fails(
    world: World,
) -> None:
    run = world.until(world.service.requests.submit(USER, PROJECT, REQUEST), RunState.REGISTERING)
    world.graph.faults.lose_reply_next("register", ServiceUnavailable("reply lost"))
    world.service.pipeline.advance(run.project, run.run_id)  # registered; the reply is lost
    assert world.service.run_repository.get(run.project, run.run_id).state is RunState.REGISTERING
    assert live_resources(world.graph)  # the activity and its entity are in the graph
    world.bucket.objects.clear()  # then the exported outputs are deleted from the bucket

    world.service.pipeline.advance(run.project, run.run_id)

    failed = world.service.run_repository.get(run.project, run.run_id)
    assert failed.state is RunState.FAILED
    assert (failed.failure_reason or "").startswith("outputs could not be registered")
    assert live_resources(world.graph) == []  # nothing of a failed run stays live


def live_resources(graph: FakeKnowledgeGraph) -> list[str]:
    return [i for i, (_, body) in graph.resources.items() if not body.get("_deprecated")]
