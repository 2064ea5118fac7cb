"""Harnesses for the contract suites: one per adapter of each port.

A harness is the adapter under test plus the test-side controls a suite needs to set up a
situation ("make this job fail with exit code 3", "lose the reply of the next submit"). Every
suite talks to the adapter only through its port, and to the outside world only through the
harness protocol below, so the same tests prove the fakes and the production adapters.

Where a real system can be driven by what is sent to it, the harness does that (a job that
must fail with exit code 3 is a job whose command is ``exit 3``: see ``ClusterGatewayHarness.job``);
controls a real system cannot offer on demand (a lost reply, an unreachable head node) are
harness methods with one meaning, which a real harness implements its own way (a TCP proxy
that drops the reply, a closed port).

How a real adapter plugs in:
1. write a class implementing the port's ``...Harness`` protocol against the real system
   (e.g. ``SqliteRunRepositoryHarness`` over a temporary database file, ``SlurmHarness`` over the
   sshd + slurmctld that ``scripts/stack`` starts; ``close()`` releases what it took);
2. add ``pytest.param(TheHarness, id="ssh-slurm", marks=pytest.mark.stack)`` to the matching list
   in ``tests/contract/conftest.py`` (``RUN_REPOSITORIES``, ``CLUSTER_GATEWAYS``, ...).
Every test of the suite then runs against it, unchanged, under that id.
"""

from __future__ import annotations

import itertools
import json
import posixpath
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from obp_workflow.adapters.fake.clock import FakeClock
from obp_workflow.adapters.fake.cluster_gateway import FakeClusterGateway
from obp_workflow.adapters.fake.cluster_provisioner import FakeClusterProvisioner, example_cluster
from obp_workflow.adapters.fake.data_synchronizer import FakeDataSynchronizer
from obp_workflow.adapters.fake.instance_orchestrator import FakeInstanceOrchestrator
from obp_workflow.adapters.fake.knowledge_graph import FakeKnowledgeGraph, activity_id, entity_id
from obp_workflow.adapters.fake.object_store import FakeObjectStore
from obp_workflow.adapters.fake.run_repository import FakeRunRepository
from obp_workflow.adapters.fake.secret_store import FakeSecretStore
from obp_workflow.adapters.fake.token_verifier import FakeTokenVerifier
from obp_workflow.core.cluster import ClusterHandle, LustreStorage, ProvisioningPhase, SecretRef
from obp_workflow.core.errors import DomainError, SubmissionUnclear
from obp_workflow.core.identity import Principal, ProjectRef
from obp_workflow.core.jobs import JobState
from obp_workflow.core.jobspec import LOG_FILE, JobSpec, build_job_spec
from obp_workflow.core.records import run_to_record
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import Requester, RunHeader
from obp_workflow.core.sync import SyncLimits, SyncPlan, SyncRefused, choose_sync
from obp_workflow.ports.cluster import ClusterGateway, ClusterProvisioner
from obp_workflow.ports.identity import TokenVerifier
from obp_workflow.ports.instances import InstanceOrchestrator
from obp_workflow.ports.knowledge_graph import KnowledgeGraph
from obp_workflow.ports.runs import RunRepository
from obp_workflow.ports.secrets import SecretStore
from obp_workflow.ports.sync import DataSynchronizer

# ==================================================================== shared test data

PROJECT_A = ProjectRef.parse(
    "11111111-1111-4111-8111-111111111111", "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
)
PROJECT_B = ProjectRef.parse(
    "22222222-2222-4222-8222-222222222222", "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REQUESTER = Requester("3f1c2a9e-0000-4000-8000-00000000a11c", "alice")

_run_numbers = itertools.count(1)


#: Real systems keep state between test sessions (Slurm accounting, run folders): each session
#: draws its own token so that no run id, job tag or folder is ever reused.
_SESSION = secrets.token_hex(4)


def fresh_run_id(prefix: str = "ct") -> str:
    """A run id no other test, in this session or any earlier one, uses."""
    return f"{prefix}-{_SESSION}-{next(_run_numbers):06d}"


def make_request(
    *,
    command: Sequence[str] | None = None,
    script: str | None = None,
    outputs: Sequence[str] = (),
    name: str | None = None,
    time_limit_minutes: int = 60,
) -> SimulationRequest:
    data: dict[str, Any] = {
        "outputs": list(outputs),
        "resources": {"time_limit_minutes": time_limit_minutes},
    }
    if script is not None:
        data["script"] = script
    else:
        data["command"] = list(command or ["true"])
    if name is not None:
        data["name"] = name
    return SimulationRequest.parse(data)


def make_header(
    project: ProjectRef = PROJECT_A,
    run_id: str | None = None,
    *,
    at: datetime = T0,
    idempotency_key: str | None = None,
    request: SimulationRequest | None = None,
) -> RunHeader:
    return RunHeader(
        run_id=run_id or fresh_run_id(),
        project=project,
        requested_by=REQUESTER,
        request=request or make_request(),
        created_at=at,
        idempotency_key=idempotency_key,
    )


# ==================================================================== RunRepository


class Damage(Enum):
    """Ways a stored run can be unreadable; each harness does them in its own storage format."""

    GARBAGE = "garbage"  # bytes that are no record at all
    NOT_AN_OBJECT = "not-an-object"  # well-formed, but not a run (a JSON array, a number)
    FUTURE_SCHEMA = "future-schema"  # a record written by schema version 99
    ILLEGAL_HISTORY = "illegal-history"  # events that are not a legal lifecycle
    STATE_MISMATCH = "state-mismatch"  # a stored state its events do not explain


class RunRepositoryHarness(Protocol):
    repo: RunRepository

    def damage(self, project: ProjectRef, run_id: str, how: Damage) -> None:
        """Overwrite the stored record of an existing run, bypassing the adapter's checks."""

    def close(self) -> None: ...


class FakeRunRepositoryHarness:
    def __init__(self) -> None:
        self.fake = FakeRunRepository()
        self.repo: RunRepository = self.fake

    def damage(self, project: ProjectRef, run_id: str, how: Damage) -> None:
        record = run_to_record(self.fake.get(project, run_id))
        if how is Damage.GARBAGE:
            raw = "\x00\xffnot a record{{"
        elif how is Damage.NOT_AN_OBJECT:
            raw = json.dumps([record])
        elif how is Damage.FUTURE_SCHEMA:
            raw = json.dumps({**record, "schema": 99})
        elif how is Damage.ILLEGAL_HISTORY:
            record["events"] = list(reversed(record["events"]))
            raw = json.dumps(record)
        else:
            raw = json.dumps({**record, "state": "DONE"})
        self.fake.corrupt(project, run_id, raw)

    def close(self) -> None:
        pass


# ==================================================================== ClusterGateway


class Ending(Enum):
    """How a submitted job ends; the command of the job makes a real cluster do it."""

    COMPLETE = "complete"  # writes its outputs, exits 0
    FAIL_3 = "fail-3"  # exit 3
    TIMEOUT = "timeout"  # sleeps past its 1-minute limit
    LONG = "long"  # sleeps for an hour (to be cancelled while live)


#: The command of each ending, as a real cluster runs it. COMPLETE writes each output given as
#: an argument (``printf run:path: > path``), which is what the fake's completed jobs write.
ENDING_COMMANDS: dict[Ending, list[str]] = {
    Ending.COMPLETE: [
        "bash",
        "-c",
        'for f in "$@"; do mkdir -p "$(dirname "$f")"; printf "%s:%s:" "$OBP_RUN_ID" "$f" > "$f";'
        " done",
        "write-outputs",
    ],
    Ending.FAIL_3: ["bash", "-c", "exit 3"],
    Ending.TIMEOUT: ["sleep", "3600"],
    Ending.LONG: ["sleep", "3600"],
}


@dataclass(frozen=True)
class Job:
    header: RunHeader
    spec: JobSpec

    @property
    def tag(self) -> str:
        return self.spec.tag

    @property
    def folder(self) -> str:
        return self.spec.run_folder


class ClusterGatewayHarness(Protocol):
    gateway: ClusterGateway
    cluster: ClusterHandle

    def job(
        self,
        ending: Ending = Ending.COMPLETE,
        *,
        outputs: Sequence[str] = (),
        command: Sequence[str] | None = None,
        script: str | None = None,
        name: str | None = None,
    ) -> Job:
        """A fresh run and its simulation job spec (``build_job_spec``) that ends as ``ending``.

        ``command``/``script`` replace the ending's command (such jobs complete)."""

    def let_start(self, job_id: str) -> None:
        """Let a submitted job leave PENDING and run. Until this, a new job stays PENDING
        (real Slurm: the harness holds its partition down and sets it up here)."""

    def let_finish(self, job_id: str) -> None:
        """Wait until the job has ended as its spec says (real Slurm: poll sacct; a TIMEOUT job
        gets ``scontrol update TimeLimit=0``)."""

    def purge(self, job_id: str) -> None:
        """Drop a finished job from the live queue, as slurmctld does after MinJobAge."""

    def lose_next_submit_reply(self) -> None:
        """The next submit reaches the scheduler, which queues the job, but its reply is lost."""

    def set_reachable(self, reachable: bool) -> None:
        """Cut (or restore) the way to the cluster's head node."""

    def jobs_tagged(self, tag: str) -> int:
        """How many jobs (live or finished) the scheduler has with this tag."""

    def read_file(self, path: str) -> bytes | None:
        """A file on the cluster, read behind the adapter's back; None when missing."""

    def append_log(self, folder: str, text: str) -> None:
        """Append to the job log of a run folder, as the job's own output would."""

    def close(self) -> None: ...


_FAKE_ENDINGS: dict[Ending, tuple[JobState, int]] = {
    Ending.COMPLETE: (JobState.COMPLETED, 0),
    Ending.FAIL_3: (JobState.FAILED, 3),
    Ending.TIMEOUT: (JobState.TIMEOUT, 0),
    Ending.LONG: (JobState.COMPLETED, 0),
}


class FakeClusterGatewayHarness:
    def __init__(self, *, lustre: bool = True, output_size: int = 64) -> None:
        self.fake = FakeClusterGateway(output_size=output_size)
        self.gateway: ClusterGateway = self.fake
        self.cluster = example_cluster(PROJECT_A, lustre=lustre)

    def job(
        self,
        ending: Ending = Ending.COMPLETE,
        *,
        outputs: Sequence[str] = (),
        command: Sequence[str] | None = None,
        script: str | None = None,
        name: str | None = None,
    ) -> Job:
        if command is None and script is None:
            command = [*ENDING_COMMANDS[ending]]
            if ending is Ending.COMPLETE:
                command += outputs
        request = make_request(
            command=command,
            script=script,
            outputs=outputs,
            name=name,
            time_limit_minutes=1 if ending is Ending.TIMEOUT else 60,
        )
        header = make_header(PROJECT_A, request=request)
        spec = build_job_spec(header, self.cluster)
        # The fake runs no command: it is told the ending the command would have.
        self.fake.script_outcome(spec.tag, *_FAKE_ENDINGS[ending])
        return Job(header, spec)

    def let_start(self, job_id: str) -> None:
        if self.fake.jobs[job_id].state is JobState.PENDING:
            self.fake.step(job_id)

    def let_finish(self, job_id: str) -> None:
        while self.fake.jobs[job_id].state in (JobState.PENDING, JobState.RUNNING):
            self.fake.step(job_id)

    def purge(self, job_id: str) -> None:
        self.fake.forget(job_id)

    def lose_next_submit_reply(self) -> None:
        self.fake.faults.lose_reply_next(
            "submit", SubmissionUnclear("sbatch's reply was lost (fake)")
        )

    def set_reachable(self, reachable: bool) -> None:
        self.fake.unreachable = not reachable

    def jobs_tagged(self, tag: str) -> int:
        return len(self.fake.jobs_tagged(tag))

    def read_file(self, path: str) -> bytes | None:
        return self.fake.files.get(path)

    def append_log(self, folder: str, text: str) -> None:
        log = posixpath.join(folder, LOG_FILE)
        self.fake.files[log] = self.fake.files.get(log, b"") + text.encode()

    def close(self) -> None:
        pass


# ==================================================================== ClusterProvisioner


class ClusterProvisionerHarness(Protocol):
    """Any provisioner: one that creates a cluster per project, or one whose clusters exist."""

    provisioner: ClusterProvisioner

    def let_creation_finish(self, project: ProjectRef) -> None:
        """Let time pass until the creation in progress has ended (ready or failed); nothing to
        wait for when the provisioner creates no cluster."""

    def close(self) -> None: ...


class CreatingProvisionerHarness(ClusterProvisionerHarness, Protocol):
    """A provisioner that creates each project's cluster on request, and can fail to."""

    def creations(self) -> int:
        """How many cluster creations the provisioner has started, ever."""

    def fail_next_creation(self, project: ProjectRef, reason: str) -> None:
        """The next creation of this project's cluster ends in CREATE_FAILED with ``reason``."""


class FakeClusterProvisionerHarness:
    READY_AFTER = 3

    def __init__(self) -> None:
        self.fake = FakeClusterProvisioner(ready_after=self.READY_AFTER)
        self.provisioner: ClusterProvisioner = self.fake

    def creations(self) -> int:
        return self.fake.creations

    def fail_next_creation(self, project: ProjectRef, reason: str) -> None:
        self.fake.fail_creation(project, reason)

    def let_creation_finish(self, project: ProjectRef) -> None:
        # The fake's time is the number of looks: a creation ends after READY_AFTER describes.
        for _ in range(self.READY_AFTER + 1):
            if self.fake.describe(project).phase is not ProvisioningPhase.IN_PROGRESS:
                return

    def close(self) -> None:
        pass


# ==================================================================== SecretStore


class SecretStoreHarness(Protocol):
    store: SecretStore

    def put(self, name: str, value: str) -> SecretRef:
        """Create a secret behind the adapter's back; the reference the adapter reads it by."""

    def close(self) -> None: ...


class FakeSecretStoreHarness:
    def __init__(self) -> None:
        self.fake = FakeSecretStore()
        self.store: SecretStore = self.fake

    def put(self, name: str, value: str) -> SecretRef:
        ref = f"arn:aws:secretsmanager:us-east-1:000000000000:secret:{name}"
        self.fake.put(ref, value)
        return SecretRef(ref)

    def close(self) -> None:
        pass


# ==================================================================== InstanceOrchestrator


class InstanceOrchestratorHarness(Protocol):
    orchestrator: InstanceOrchestrator

    def starts(self) -> int:
        """How many instances were started, ever, for any project."""

    def close(self) -> None: ...


class FakeInstanceOrchestratorHarness:
    def __init__(self) -> None:
        self.fake = FakeInstanceOrchestrator(FakeClock(T0))
        self.orchestrator: InstanceOrchestrator = self.fake

    def starts(self) -> int:
        return self.fake.starts

    def close(self) -> None:
        pass


# ==================================================================== DataSynchronizer


class CountingBucket(FakeObjectStore):
    """The fake bucket, counting the objects written to it."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.puts += 1
        super().put(bucket, key, data)


class BlockingGraph(FakeKnowledgeGraph):
    """The fake knowledge graph, counting file uploads; files in ``blocked`` never land."""

    def __init__(self) -> None:
        super().__init__()
        self.uploads = 0
        self.blocked: set[str] = set()
        self._count_lock = threading.Lock()

    def upload_file(self, file_id: str, data: bytes) -> str:
        with self._count_lock:
            self.uploads += 1
        digest = super().upload_file(file_id, data)
        if file_id in self.blocked:
            self.files.pop(file_id, None)
        return digest


class DataSynchronizerHarness(Protocol):
    sync: DataSynchronizer
    gateway: ClusterGateway
    cluster: ClusterHandle

    def run_simulation(self, outputs: Sequence[str]) -> tuple[RunHeader, SyncPlan]:
        """A run whose simulation job completed on the cluster, writing ``outputs``, and the
        plan ``choose_sync`` makes for them."""

    def let_sync_job_finish(self, job_id: str) -> None: ...

    def block(self, header: RunHeader, plan: SyncPlan, relative_path: str) -> None:
        """This output will never appear at its destination (call before ``start``)."""

    def sync_jobs(self, header: RunHeader) -> int:
        """How many sync jobs of the run the cluster has (live or finished)."""

    def stored(self, header: RunHeader) -> int:
        """How many objects of the run are at the destination."""

    def transfers(self) -> int:
        """How many file writes reached the destination, ever."""

    def close(self) -> None: ...


class FakeDataSynchronizerHarness:
    def __init__(self, *, lustre: bool) -> None:
        # A small nominal size: every output is longer, so each has its own size.
        self.cluster_gateway_harness = FakeClusterGatewayHarness(lustre=lustre, output_size=16)
        self.fake_cluster = self.cluster_gateway_harness.fake
        self.gateway: ClusterGateway = self.fake_cluster
        self.cluster = self.cluster_gateway_harness.cluster
        self.bucket = CountingBucket()
        self.graph = BlockingGraph()
        self.sync: DataSynchronizer = FakeDataSynchronizer(
            self.fake_cluster, self.bucket, self.graph
        )

    def run_simulation(self, outputs: Sequence[str]) -> tuple[RunHeader, SyncPlan]:
        job = self.cluster_gateway_harness.job(Ending.COMPLETE, outputs=outputs)
        job_id = self.gateway.submit(self.cluster, job.spec)
        self.cluster_gateway_harness.let_finish(job_id)
        found = {f.path: f.size for f in self.gateway.list_outputs(self.cluster, job.folder)}
        plan = choose_sync(self.cluster.storage, job.folder, list(outputs), found, SyncLimits())
        assert not isinstance(plan, SyncRefused), plan
        return job.header, plan

    def let_sync_job_finish(self, job_id: str) -> None:
        self.cluster_gateway_harness.let_finish(job_id)

    def block(self, header: RunHeader, plan: SyncPlan, relative_path: str) -> None:
        (file,) = [f for f in plan.files if f.relative_path == relative_path]
        if file.s3_key is not None:
            self.bucket.blocked.add(file.s3_key)
        else:
            self.graph.blocked.add(
                entity_id(header.project, header.run_id, relative_path) + "/file"
            )

    def sync_jobs(self, header: RunHeader) -> int:
        return sum(
            1 for j in self.fake_cluster.jobs.values() if j.tag.startswith(header.tag + "-sync")
        )

    def stored(self, header: RunHeader) -> int:
        storage = self.cluster.storage
        if isinstance(storage, LustreStorage):
            prefix = storage.s3_key(self.cluster.run_folder(header.run_id) + "/x")
            assert prefix is not None
            folder_key = prefix[: -len("x")]
            return sum(1 for key in self.bucket.sizes(storage.bucket) if key.startswith(folder_key))
        root = activity_id(header.project, header.run_id) + "/"
        return sum(1 for file_id in self.graph.files if file_id.startswith(root))

    def transfers(self) -> int:
        return self.bucket.puts + self.graph.uploads

    def close(self) -> None:
        pass


# ==================================================================== KnowledgeGraph


#: The graph's own S3 storage bucket in the KnowledgeGraph harnesses (the Nexus data bucket).
GRAPH_BUCKET = "obp-graph-storage"


class KnowledgeGraphHarness(Protocol):
    graph: KnowledgeGraph

    def put_object(self, key: str, data: bytes) -> None:
        """Put an object into the graph's storage bucket (``GRAPH_BUCKET``)."""

    def linked(self, run: RunHeader, relative_path: str) -> tuple[str, int] | None:
        """The key and size of the object the run's file for this output is linked to; None
        when there is no such file, or it is withdrawn."""

    def creations(self) -> int:
        """How many resources were ever created (not updated)."""

    def revision(self, resource_id: str) -> int | None:
        """The resource's revision, None when it does not exist."""

    def snapshot(self) -> dict[str, Any]:
        """The graph's content: each resource's payload by id, without revisions or timestamps."""

    def lose_next_register_reply(self, error: DomainError) -> None:
        """The next register does its work, then the caller gets ``error`` instead of a reply."""

    def withdrawn(self, resource_id: str) -> bool:
        """Whether the resource is marked withdrawn (deprecated) in the graph."""

    def close(self) -> None: ...


class FakeKnowledgeGraphHarness:
    def __init__(self) -> None:
        self.bucket = FakeObjectStore()
        self.fake = FakeKnowledgeGraph(self.bucket, GRAPH_BUCKET)
        self.graph: KnowledgeGraph = self.fake

    def put_object(self, key: str, data: bytes) -> None:
        self.bucket.put(GRAPH_BUCKET, key, data)

    def linked(self, run: RunHeader, relative_path: str) -> tuple[str, int] | None:
        found = self.fake.links.get(entity_id(run.project, run.run_id, relative_path) + "/file")
        return None if found is None or found.withdrawn else (found.key, found.size)

    def creations(self) -> int:
        return self.fake.creations

    def revision(self, resource_id: str) -> int | None:
        found = self.fake.resources.get(resource_id)
        return None if found is None else found[0]

    def snapshot(self) -> dict[str, Any]:
        return {ident: payload for ident, (_rev, payload) in self.fake.resources.items()}

    def lose_next_register_reply(self, error: DomainError) -> None:
        self.fake.faults.lose_reply_next("register", error)

    def withdrawn(self, resource_id: str) -> bool:
        found = self.fake.resources.get(resource_id)
        return found is not None and bool(found[1].get("_deprecated"))

    def close(self) -> None:
        pass


# ==================================================================== TokenVerifier


class TokenVerifierHarness(Protocol):
    verifier: TokenVerifier

    def issue(self, principal: Principal) -> str:
        """A valid bearer token for ``principal`` (real Keycloak: minted by the test issuer)."""

    def close(self) -> None: ...


class FakeTokenVerifierHarness:
    def __init__(self) -> None:
        self.fake = FakeTokenVerifier()
        self.verifier: TokenVerifier = self.fake
        self._n = itertools.count(1)

    def issue(self, principal: Principal) -> str:
        token = f"tok-{next(self._n)}-Zq8xW3vN7pLk2Rt5"
        self.fake.issue(token, principal)
        return token

    def close(self) -> None:
        pass


# ==================================================================== static conformance

if TYPE_CHECKING:  # mypy proves each harness implements its port's harness protocol
    _run_repositories: list[Callable[[], RunRepositoryHarness]] = [FakeRunRepositoryHarness]
    _cluster_gateways: list[Callable[[], ClusterGatewayHarness]] = [FakeClusterGatewayHarness]
    _provisioners: list[Callable[[], CreatingProvisionerHarness]] = [FakeClusterProvisionerHarness]
    _secret_stores: list[Callable[[], SecretStoreHarness]] = [FakeSecretStoreHarness]
    _orchestrators: list[Callable[[], InstanceOrchestratorHarness]] = [
        FakeInstanceOrchestratorHarness
    ]
    _synchronizers: list[Callable[[], DataSynchronizerHarness]] = [
        lambda: FakeDataSynchronizerHarness(lustre=True)
    ]
    _graphs: list[Callable[[], KnowledgeGraphHarness]] = [FakeKnowledgeGraphHarness]
    _verifiers: list[Callable[[], TokenVerifierHarness]] = [FakeTokenVerifierHarness]
