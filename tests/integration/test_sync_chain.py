"""The whole chain, for real: a run submitted to the application ends in the knowledge graph.

The application drives a real Slurm job over real SSH (the test stack); then, by the DataSync
policy:

- on a cluster with Lustre, the elevated sync job (as the admin user) archives the outputs with
  the stack's ``lfs`` fixture into an S3 bucket on moto, the batched monitor sees it end, the
  synchronizer confirms every object in the bucket, and the registration links each object as a
  Nexus file (the Nexus Delta test server reads it from the same bucket) under an activity with
  the run's provenance;
- on a cluster without Lustre, the outputs are streamed from the cluster into Nexus files.

Nothing is faked but the provisioner (it answers with the stack as the project's cluster).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from obp_workflow.adapters.fake.cluster_provisioner import FakeClusterProvisioner
from obp_workflow.adapters.fake.event_publisher import FakeEventPublisher
from obp_workflow.adapters.fake.id_generator import FakeIdGenerator
from obp_workflow.adapters.fake.instance_orchestrator import FakeInstanceOrchestrator
from obp_workflow.adapters.fake.run_repository import FakeRunRepository
from obp_workflow.adapters.nexus.graph import NexusKnowledgeGraph
from obp_workflow.adapters.nexus.upload import NexusUploadSynchronizer
from obp_workflow.adapters.sync.router import SyncRouter
from obp_workflow.adapters.system.clock import SystemClock
from obp_workflow.core.cluster import LustreStorage
from obp_workflow.core.identity import Principal, parse_groups
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState, SimulationRun
from tests.application import Application, application
from tests.contract.harness import ENDING_COMMANDS, PROJECT_A, PROJECT_B, Ending
from tests.contract.harness_nexus import PUBLIC_BASE, nexus_settings
from tests.contract.harness_slurm import stack_cluster
from tests.contract.harness_sync import BUCKET, LustreHsmSynchronizerHarness
from tests.nexus_server import TOKEN, NexusServer
from tests.stack import accounted, slurm, stack, wait_until

pytestmark = pytest.mark.stack

LUSTRE_PROJECT, SHARED_PROJECT = PROJECT_A, PROJECT_B
USER = Principal(
    "subject-ada",
    "ada",
    parse_groups(
        [
            f"/proj/{p.virtual_lab_id}/{p.project_id}/member"
            for p in (LUSTRE_PROJECT, SHARED_PROJECT)
        ]
    ),
)
OUTPUTS = ("spikes.dat", "reports/soma.h5")
S3_STORAGE = "nexus-data"


@dataclass
class Chain:
    service: Application
    repo: FakeRunRepository
    hsm: LustreHsmSynchronizerHarness
    nexus: NexusKnowledgeGraph
    server: NexusServer

    def submit(self, project: Any) -> SimulationRun:
        request = SimulationRequest.parse(
            {
                "name": "chain",
                "command": [*ENDING_COMMANDS[Ending.COMPLETE], *OUTPUTS],
                "outputs": list(OUTPUTS),
                "resources": {"time_limit_minutes": 5},
            }
        )
        return self.service.requests.submit(USER, project, request)

    def drive(self, run: SimulationRun, *, before_registering: Any = None) -> SimulationRun:
        """Monitor and advance until the run ends (as the workflow container's loop does)."""

        def ended() -> bool:
            self.service.pipeline.monitor_cycle()
            current = self.repo.get(run.project, run.run_id)
            if current.state is RunState.REGISTERING and before_registering is not None:
                before_registering(current)
            self.service.pipeline.advance(run.project, run.run_id)
            return self.repo.get(run.project, run.run_id).terminal

        try:
            wait_until(ended, 180, f"run {run.run_id} to end", interval=0.3)
        except TimeoutError:
            current = self.repo.get(run.project, run.run_id)
            story = "; ".join(f"{e.to_state.value}: {e.reason}" for e in current.events[-6:])
            raise AssertionError(f"run {run.run_id} is {current.state.value}: {story}") from None
        return self.repo.get(run.project, run.run_id)

    def key(self, run: SimulationRun, relative_path: str) -> str:
        cluster = self.hsm.cluster
        assert isinstance(cluster.storage, LustreStorage)
        key = cluster.storage.s3_key(f"{cluster.run_folder(run.run_id)}/{relative_path}")
        assert key is not None
        return key


@pytest.fixture
def chain() -> Iterator[Chain]:
    hsm = LustreHsmSynchronizerHarness()
    server = NexusServer(base_uri=PUBLIC_BASE, s3=hsm.s3, s3_storages={S3_STORAGE: BUCKET})
    server.start()
    settings = nexus_settings(server, s3_storage=S3_STORAGE, s3_storage_bucket=BUCKET)
    for project in (LUSTRE_PROJECT, SHARED_PROJECT):
        server.create_project(*settings.project_for(project))
    nexus = NexusKnowledgeGraph(settings, lambda: TOKEN)
    shared, _ = stack_cluster()  # the same stack, seen as a cluster without Lustre
    clusters = {LUSTRE_PROJECT: hsm.cluster, SHARED_PROJECT: shared}
    clock = SystemClock()
    repo = FakeRunRepository()
    service = application(
        run_repository=repo,
        cluster_provisioner=FakeClusterProvisioner(ready_after=0, cluster_for=clusters.__getitem__),
        cluster_gateway=hsm.gateway,
        data_synchronizer=SyncRouter(
            lustre=hsm.sync, upload=NexusUploadSynchronizer(hsm.gateway, nexus)
        ),
        knowledge_graph=nexus,
        instance_orchestrator=FakeInstanceOrchestrator(clock),
        clock=clock,
        id_generator=FakeIdGenerator(prefix=f"chain{secrets.token_hex(4)}"),
        event_publisher=FakeEventPublisher(),
    )
    c = Chain(service, repo, hsm, nexus, server)
    try:
        yield c
    finally:
        for run in repo.list_active():
            tag = repo.get(run.project, run.run_id).header.tag
            slurm("scancel", f"--name={tag}", check=False)
        nexus.close()
        server.stop()
        hsm.close()


def content_of(run: SimulationRun, relative_path: str) -> bytes:
    """What ``ENDING_COMMANDS[COMPLETE]`` writes into each output."""
    return f"{run.run_id}:{relative_path}:".encode()


def test_a_run_on_a_lustre_cluster_ends_linked_in_nexus_with_its_provenance(
    chain: Chain,
) -> None:
    run = chain.drive(chain.submit(LUSTRE_PROJECT))
    assert run.state is RunState.DONE, run.failure_reason
    assert [s.value for s in run.states()][-3:] == ["SYNCING", "REGISTERING", "DONE"]

    # Slurm: the simulation ran as the user, the sync job as the admin, both accounted.
    assert run.job_id is not None
    assert run.sync_job_id is not None
    assert accounted(run.job_id, run.header.tag, "State,User,JobName") == (
        "COMPLETED",
        stack().user("sim"),
        run.header.tag,
    )
    assert accounted(run.sync_job_id, f"{run.header.tag}-sync-1", "State,User,JobName") == (
        "COMPLETED",
        stack().user("admin"),
        f"{run.header.tag}-sync-1",
    )
    assert run.sync_kind == "lustre-hsm"

    # S3: every output archived by the HSM, byte for byte.
    for path in OUTPUTS:
        assert chain.hsm.object_bytes(chain.key(run, path)) == content_of(run, path)

    # Nexus: each output is a file linked to its object, under an entity of the activity.
    activity_id = chain.nexus.activity_id(run.project, run.run_id)
    assert run.kg_activity_id == activity_id
    activity = chain.server.source(activity_id)
    assert activity is not None
    entity_ids = [chain.nexus.entity_id(run.project, run.run_id, p) for p in OUTPUTS]
    assert activity["generated"] == entity_ids
    assert activity["jobId"] == run.job_id
    assert activity["exitCode"] == 0
    assert activity["syncKind"] == "lustre-hsm"
    assert activity["clusterName"] == stack().cluster_name
    accounting = activity["slurmAccounting"]  # the scheduler's own record of the job
    assert (accounting["jobId"], accounting["state"]) == (run.job_id, "COMPLETED")
    assert (accounting["nodes"], accounting["exitCode"]) == (1, 0)
    assert accounting["nodeList"]
    assert accounting["elapsed"].startswith("PT")
    assert activity["wasAttributedTo"]["identifier"] == USER.subject
    for path, entity_id in zip(OUTPUTS, entity_ids, strict=True):
        data = content_of(run, path)
        file_id = chain.nexus.file_id(run.project, run.run_id, path)
        stored = chain.server.entry(file_id)
        assert stored is not None
        state = stored.current
        assert (state.origin, state.location, state.size) == (
            "Link",
            chain.key(run, path),
            len(data),
        )
        assert state.digest == hashlib.sha256(data).hexdigest()
        entity = chain.server.source(entity_id)
        assert entity is not None
        assert entity["wasGeneratedBy"] == activity_id
        download = entity["distribution"]
        assert download["contentUrl"] == chain.nexus.nexus.file_address(
            *chain.nexus.project_for(run.project), file_id
        )
        assert download["atLocation"]["location"] == f"s3://{BUCKET}/{chain.key(run, path)}"
        assert download["contentSize"]["value"] == len(data)
        assert download["digest"] == {
            "algorithm": "SHA-256",
            "value": hashlib.sha256(data).hexdigest(),
        }


def test_a_run_on_a_cluster_without_lustre_ends_uploaded_into_nexus(chain: Chain) -> None:
    run = chain.drive(chain.submit(SHARED_PROJECT))
    assert run.state is RunState.DONE, run.failure_reason
    assert run.sync_kind == "nexus-upload"
    assert run.sync_job_id is None  # no elevated job without Lustre
    activity = chain.server.source(chain.nexus.activity_id(run.project, run.run_id))
    assert activity is not None
    assert activity["syncKind"] == "nexus-upload"
    for path in OUTPUTS:
        file_id = chain.nexus.file_id(run.project, run.run_id, path)
        assert chain.server.file_content(file_id) == content_of(run, path)
        stored = chain.server.entry(file_id)
        assert stored is not None
        assert stored.current.origin != "Link"


def test_an_object_deleted_after_its_confirmation_fails_the_run_by_name(chain: Chain) -> None:
    deleted: list[str] = []

    def delete_one(run: SimulationRun) -> None:
        if not deleted:
            deleted.append(chain.key(run, "reports/soma.h5"))
            chain.hsm.s3.delete_object(Bucket=BUCKET, Key=deleted[0])

    run = chain.drive(chain.submit(LUSTRE_PROJECT), before_registering=delete_one)
    assert deleted
    assert run.state is RunState.FAILED
    reason = run.failure_reason or ""
    assert reason.startswith("outputs could not be registered"), reason
    assert "reports/soma.h5" in reason
    assert "spikes.dat" not in reason
    # The activity, the registration's commit marker, was never written.
    assert chain.server.source(chain.nexus.activity_id(run.project, run.run_id)) is None
