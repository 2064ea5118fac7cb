"""Exactly-once submission when two processes drive the same run (a second worker started by
mistake, or a worker restarted while the first was still submitting)."""

from __future__ import annotations

from collections.abc import Callable
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
from obp_workflow.core.cluster import ClusterHandle
from obp_workflow.core.errors import ClusterUnreachable
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.jobspec import JobSpec
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState
from tests.application import Application, application

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = ProjectRef.parse(VLAB, "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20")
USER = Principal("subject-ada", "ada", parse_groups([f"/proj/{VLAB}/{PROJECT.project_id}/member"]))
REQUEST = SimulationRequest.parse({"command": ["run-sim"]})
LEASE = timedelta(seconds=120)


class SlowSbatch(FakeClusterGateway):
    """A cluster whose ``sbatch`` lets something else happen while it is in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.during_submit: Callable[[], None] = lambda: None

    def submit(self, cluster: ClusterHandle, spec: JobSpec) -> str:
        hook, self.during_submit = self.during_submit, lambda: None
        hook()
        return super().submit(cluster, spec)


class Two:
    """Two processes' pipelines over one repository and one cluster."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.cluster = SlowSbatch()
        self.repo = FakeRunRepository()
        objects = FakeObjectStore()
        graph = FakeKnowledgeGraph(objects)
        provisioner = FakeClusterProvisioner(ready_after=0)

        def one() -> Application:
            return application(
                run_repository=self.repo,
                cluster_provisioner=provisioner,
                cluster_gateway=self.cluster,
                data_synchronizer=FakeDataSynchronizer(self.cluster, objects, graph),
                knowledge_graph=graph,
                instance_orchestrator=FakeInstanceOrchestrator(self.clock),
                clock=self.clock,
                id_generator=FakeIdGenerator(),
                event_publisher=FakeEventPublisher(),
                policy=ServicePolicy(submit_lease=LEASE),
            )

        self.a, self.b = one(), one()

    def submitting(self) -> str:
        run = self.a.requests.submit(USER, PROJECT, REQUEST)
        self.a.pipeline.advance(PROJECT, run.run_id)  # ACCEPTED -> SUBMITTING (cluster ready)
        assert self.repo.get(PROJECT, run.run_id).state is RunState.SUBMITTING
        return run.run_id

    def jobs(self, run_id: str) -> int:
        return self.cluster.submitted_tags.count(f"obp-{run_id}")


def test_a_second_process_waits_for_a_submission_in_flight_instead_of_repeating_it() -> None:
    two = Two()
    run_id = two.submitting()
    two.cluster.during_submit = lambda: two.b.pipeline.advance(PROJECT, run_id)

    two.a.pipeline.advance(PROJECT, run_id)  # B looks while A's sbatch is in flight

    run = two.repo.get(PROJECT, run_id)
    assert run.state is RunState.QUEUED
    assert two.jobs(run_id) == 1
    two.b.pipeline.advance(PROJECT, run_id)  # and later: nothing more to do
    assert two.jobs(run_id) == 1


def test_an_attempt_whose_process_died_is_repeated_once_its_lease_has_run_out() -> None:
    two = Two()
    run_id = two.submitting()

    def die() -> None:
        raise KeyboardInterrupt  # the process dies after the intent, before sbatch returns

    two.cluster.during_submit = die
    with pytest.raises(KeyboardInterrupt):
        two.a.pipeline.advance(PROJECT, run_id)
    assert two.jobs(run_id) == 0

    two.clock.advance(LEASE.total_seconds() - 1)
    two.b.pipeline.advance(PROJECT, run_id)  # the lease still holds: nothing submitted
    assert two.jobs(run_id) == 0
    assert two.repo.get(PROJECT, run_id).state is RunState.SUBMITTING

    two.clock.advance(2)
    two.b.pipeline.advance(PROJECT, run_id)
    assert two.jobs(run_id) == 1
    assert two.repo.get(PROJECT, run_id).state is RunState.QUEUED


def test_an_unreachable_cluster_settles_the_attempt_so_the_next_step_needs_no_lease() -> None:
    two = Two()
    run_id = two.submitting()
    two.cluster.faults.fail_next("submit", ClusterUnreachable("connection refused"))

    two.a.pipeline.advance(PROJECT, run_id)
    run = two.repo.get(PROJECT, run_id)
    assert run.stale
    assert run.submission_pending_since() is None
    assert run.submit_unclear == 0  # an unreachable cluster never counts against the run

    two.b.pipeline.advance(PROJECT, run_id)  # at once, no lease to wait for
    assert two.jobs(run_id) == 1
