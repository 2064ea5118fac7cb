"""Registration with the run's provenance, step by step, on the in-memory adapters: what the
scheduler's accounting adds, and what must never hold a registration back."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from obp_workflow.adapters.fake.cluster import FakeCluster
from obp_workflow.adapters.fake.knowledge_graph import InMemoryKnowledgeGraph
from obp_workflow.adapters.fake.provisioner import EXAMPLE_BUCKET, FakeProvisioner, example_cluster
from obp_workflow.adapters.fake.runs import InMemoryRunRepository
from obp_workflow.adapters.fake.simple import InMemoryInstances
from obp_workflow.adapters.fake.sync import FakeDataSynchronizer, InMemoryBucket
from obp_workflow.adapters.fake.system import ManualClock, RecordingPublisher, SequentialIds
from obp_workflow.application.service import WorkflowService
from obp_workflow.core.errors import ServiceUnavailable
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState, SimulationRun

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = ProjectRef.parse(VLAB, "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20")
USER = Principal("subject-ada", "ada", parse_groups([f"/proj/{VLAB}/{PROJECT.project_id}/member"]))
REQUEST = SimulationRequest.parse(
    {"command": ["run-sim"], "outputs": ["out/a.h5"], "resources": {"nodes": 4}}
)


@dataclass
class World:
    service: WorkflowService
    cluster: FakeCluster
    graph: InMemoryKnowledgeGraph

    def until(self, run: SimulationRun, state: RunState) -> SimulationRun:
        for _ in range(30):
            current = self.service.runs.get(run.project, run.run_id)
            if current.state is state:
                return current
            self.cluster.step()
            self.service.sweep()
        raise AssertionError(f"run {run.run_id} never reached {state.value}")

    def activity(self, run: SimulationRun) -> dict[str, object]:
        assert run.kg_activity_id is not None
        return self.graph.resources[run.kg_activity_id][1]


@pytest.fixture
def world() -> World:
    clock = ManualClock()
    cluster = FakeCluster()
    bucket = InMemoryBucket()
    graph = InMemoryKnowledgeGraph(bucket, EXAMPLE_BUCKET)
    service = WorkflowService(
        runs=InMemoryRunRepository(),
        provisioner=FakeProvisioner(ready_after=0, cluster_for=example_cluster),
        gateway=cluster,
        synchronizer=FakeDataSynchronizer(cluster, bucket, graph),
        knowledge_graph=graph,
        instances=InMemoryInstances(clock),
        clock=clock,
        ids=SequentialIds(),
        events=RecordingPublisher(),
    )
    return World(service, cluster, graph)


def test_the_provenance_carries_the_schedulers_accounting_record(world: World) -> None:
    run = world.until(world.service.submit(USER, PROJECT, REQUEST), RunState.DONE)
    accounting = world.activity(run)["accounting"]
    assert accounting == {"nodes": 4, "elapsed": 1, "exitCode": 0}


def test_a_cluster_gone_after_the_sync_does_not_hold_the_registration_back(world: World) -> None:
    run = world.until(world.service.submit(USER, PROJECT, REQUEST), RunState.REGISTERING)
    world.cluster.unreachable = True
    world.service.advance(run.project, run.run_id)
    done = world.service.runs.get(run.project, run.run_id)
    assert done.state is RunState.DONE
    assert world.activity(done)["accounting"] is None


def test_an_incomplete_accounting_record_is_waited_for(world: World) -> None:
    run = world.until(world.service.submit(USER, PROJECT, REQUEST), RunState.REGISTERING)
    world.cluster.faults.fail_next("accounting", ServiceUnavailable("not complete yet"))
    world.service.advance(run.project, run.run_id)
    assert world.service.runs.get(run.project, run.run_id).state is RunState.REGISTERING
    world.service.advance(run.project, run.run_id)
    done = world.service.runs.get(run.project, run.run_id)
    assert done.state is RunState.DONE
    assert world.activity(done)["accounting"] == {"nodes": 4, "elapsed": 1, "exitCode": 0}
