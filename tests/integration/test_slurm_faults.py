"""Faults against the real stack: the application driving real Slurm over real SSH.

Everything but the cluster is in memory; the cluster is the test stack (slurmctld, slurmd,
slurmdbd, sshd on loopback). Each test breaks something for real: sshd stopped, the connection
cut right after sbatch, a job purged from the controller, a changed host key, a wrong user key,
and a burst of submissions.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from obp_workflow.adapters.fake.cluster_gateway import FakeClusterGateway
from obp_workflow.adapters.fake.cluster_provisioner import FakeClusterProvisioner
from obp_workflow.adapters.fake.data_synchronizer import FakeDataSynchronizer
from obp_workflow.adapters.fake.event_publisher import FakeEventPublisher
from obp_workflow.adapters.fake.id_generator import FakeIdGenerator
from obp_workflow.adapters.fake.instance_orchestrator import FakeInstanceOrchestrator
from obp_workflow.adapters.fake.knowledge_graph import FakeKnowledgeGraph
from obp_workflow.adapters.fake.object_store import FakeObjectStore
from obp_workflow.adapters.fake.run_repository import FakeRunRepository
from obp_workflow.adapters.fake.secret_store import FakeSecretStore
from obp_workflow.adapters.ssh.connection import Endpoint, PoolSettings, SshPool
from obp_workflow.adapters.ssh.slurm import SlurmClusterGateway
from obp_workflow.adapters.system.clock import SystemClock
from obp_workflow.core.cluster import ClusterHandle, KeyRole
from obp_workflow.core.errors import ClusterAccessDenied, ClusterUnreachable, HostKeyRejected
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.jobspec import build_job_spec
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import Requester, RunHeader, RunState, SimulationRun
from tests.application import Application, application
from tests.contract.harness_slurm import TEST_POOL, stack_cluster
from tests.stack import held, in_controller, slurm, stack, tagged_ids, wait_until

pytestmark = pytest.mark.stack

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = ProjectRef.parse(VLAB, "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20")
USER = Principal("subject-ada", "ada", parse_groups([f"/proj/{VLAB}/{PROJECT.project_id}/member"]))


#: The job is over and succeeded (the synchronizer here is a fake with nothing to move).
PAST_THE_JOB = {RunState.SYNCING, RunState.REGISTERING, RunState.DONE}


@dataclass
class World:
    service: Application
    repo: FakeRunRepository
    pool: SshPool
    cluster: ClusterHandle

    def submit(self, command: list[str]) -> SimulationRun:
        request = SimulationRequest.parse(
            {"command": command, "resources": {"time_limit_minutes": 5}}
        )
        return self.service.requests.submit(USER, PROJECT, request)

    def advance_all(self) -> None:
        for run in self.repo.list_active():
            self.service.pipeline.advance(run.project, run.run_id)

    def run(self, run_id: str) -> SimulationRun:
        return self.repo.get(PROJECT, run_id)


def make_world(
    settings: PoolSettings = TEST_POOL,
    cluster: ClusterHandle | None = None,
    secrets: FakeSecretStore | None = None,
) -> World:
    stack_handle, stack_secrets = stack_cluster()
    cluster = cluster or stack_handle
    pool = SshPool(secrets or stack_secrets, settings)
    unused = FakeClusterGateway()  # the synchronizer is not under test here
    graph = FakeKnowledgeGraph()
    clock = SystemClock()
    service = application(
        run_repository=(repo := FakeRunRepository()),
        cluster_provisioner=FakeClusterProvisioner(ready_after=0, cluster_for=lambda _p: cluster),
        cluster_gateway=SlurmClusterGateway(pool),
        data_synchronizer=FakeDataSynchronizer(unused, FakeObjectStore(), graph),
        knowledge_graph=graph,
        instance_orchestrator=FakeInstanceOrchestrator(clock),
        clock=clock,
        id_generator=FakeIdGenerator(prefix=f"flt{int(time.time() * 1000) % 10**9:09d}"),
        event_publisher=FakeEventPublisher(),
    )
    return World(service, repo, pool, cluster)


@pytest.fixture
def world() -> Iterator[World]:
    w = make_world()
    try:
        yield w
    finally:
        stack().sshd("start")
        for run in w.repo.list_active():
            tag = w.repo.get(run.project, run.run_id).header.tag
            slurm("scancel", f"--name={tag}", check=False)
        w.pool.close()


def until_state(w: World, run_id: str, states: set[RunState], timeout: float = 60) -> None:
    def reached() -> bool:
        w.service.pipeline.monitor_cycle()
        w.advance_all()
        return w.run(run_id).state in states

    try:
        wait_until(reached, timeout, f"run {run_id} to reach {states}", interval=0.5)
    except TimeoutError:
        run = w.run(run_id)
        story = "; ".join(f"{e.to_state.value}: {e.reason}" for e in run.events[-6:])
        raise AssertionError(
            f"run {run_id} is {run.state.value} (stale: {run.stale_reason}): {story}"
        ) from None


def test_sshd_stopped_during_monitoring_makes_runs_stale_then_they_recover(world: World) -> None:
    w = world
    gate = Path(stack().raw["state_dir"]) / "gates" / f"outage-{time.time_ns()}"
    gate.parent.mkdir(mode=0o755, exist_ok=True)
    wait_for_gate = f'until [ -e "{gate}" ]; do sleep 0.2; done'
    runs = [w.submit(["bash", "-c", wait_for_gate]) for _ in range(3)]
    for run in runs:
        until_state(w, run.run_id, {RunState.QUEUED, RunState.RUNNING})

    stack().sshd("stop")
    for _ in range(5):
        report = w.service.pipeline.monitor_cycle()
        assert report.unreachable == (str(PROJECT),)
    for run in runs:
        current = w.run(run.run_id)
        assert current.stale, current.state
        assert current.state in (RunState.QUEUED, RunState.RUNNING)
        assert "unreachable" not in (current.failure_reason or "")

    stack().sshd("start")
    gate.touch()
    try:
        for run in runs:
            until_state(w, run.run_id, PAST_THE_JOB)
    finally:
        gate.unlink(missing_ok=True)
    for run in runs:
        current = w.run(run.run_id)
        assert not current.stale
        assert current.state is not RunState.FAILED
        assert [e.kind for e in current.events].count("stale") == 1  # recorded once
        assert current.job_id is not None


def test_reconnects_during_an_outage_respect_the_connection_budget() -> None:
    budget = dataclasses.replace(
        TEST_POOL, connects_per_minute=3, backoff_base_seconds=0.0, backoff_cap_seconds=0.0
    )
    w = make_world(settings=budget)
    try:
        run = w.submit(["sleep", "60"])
        until_state(w, run.run_id, {RunState.QUEUED, RunState.RUNNING})
        opened = w.pool.connects
        stack().sshd("stop")
        for _ in range(30):
            w.service.pipeline.monitor_cycle()
        stack().sshd("start")
        # One budget token was left after the first connection; no cycle could take more.
        assert w.pool.connect_attempts - opened <= 2
        assert w.run(run.run_id).stale
        assert w.run(run.run_id).state is not RunState.FAILED
    finally:
        stack().sshd("start")
        slurm("scancel", "--name=" + f"obp-{run.run_id}", check=False)
        w.pool.close()


def test_a_connection_cut_right_after_sbatch_leaves_one_job_that_is_adopted(world: World) -> None:
    w = world
    run = w.submit(["true"])
    w.advance_all()  # ACCEPTED -> PROVISIONING -> SUBMITTING
    assert w.run(run.run_id).state is RunState.SUBMITTING
    flag = Path(stack().home("sim")) / ".obp-test-cut-after-sbatch"
    flag.touch()
    shutil.chown(flag, stack().user("sim"))
    w.service.pipeline.advance(PROJECT, run.run_id)
    after = w.run(run.run_id)
    assert not flag.exists(), "the fixture did not run: the fault was not injected"
    assert after.state is RunState.QUEUED
    assert after.job_adopted, [e.reason for e in after.events]
    assert tagged_ids(run.header.tag) == {after.job_id}


def test_a_job_purged_from_the_controller_still_resolves_through_sacct(world: World) -> None:
    w = world
    run = w.submit(["bash", "-c", "exit 7"])
    until_state(w, run.run_id, {RunState.QUEUED, RunState.RUNNING, RunState.FAILED})
    job_id = w.run(run.run_id).job_id
    assert job_id is not None
    wait_until(lambda: not in_controller(job_id), 60, "MinJobAge purge", interval=1.0)
    w.service.pipeline.monitor_cycle()
    final = w.run(run.run_id)
    assert final.state is RunState.FAILED
    assert final.exit_code == 7
    assert final.scheduler_raw is not None
    assert final.scheduler_raw.startswith(f"{job_id}|FAILED|7:0")


def test_a_changed_host_key_is_refused_and_the_run_goes_stale_not_failed() -> None:
    fake_key = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
        .decode()
    )
    handle, secrets = stack_cluster()
    changed = dataclasses.replace(handle, host_key=fake_key)
    w = make_world(cluster=changed, secrets=secrets)
    try:
        with pytest.raises(HostKeyRejected, match=r"not the pinned one|unknown host key"):
            w.service.pipeline.cluster_gateway.poll(changed, ["1"])
        run = w.submit(["true"])
        for _ in range(3):
            w.advance_all()
        current = w.run(run.run_id)
        assert current.state is RunState.SUBMITTING
        assert current.stale
        assert "host key" in (current.stale_reason or "")
        assert w.pool.connects == 0
    finally:
        w.pool.close()


def test_a_wrong_user_key_is_refused_with_a_clear_error_that_reveals_no_key() -> None:
    handle, secrets = stack_cluster()
    wrong = paramiko.RSAKey.generate(2048)
    text = io.StringIO()
    wrong.write_private_key(text)
    secrets.put("stack/user-key", text.getvalue())
    w = make_world(cluster=handle, secrets=secrets)
    try:
        with pytest.raises(ClusterAccessDenied) as refused:
            w.service.pipeline.cluster_gateway.poll(handle, ["1"])
        message = refused.value.message
        assert "stack/user-key" in message
        assert stack().user("sim") in message
        assert "PRIVATE KEY" not in message
        assert text.getvalue()[40:80] not in message
    finally:
        w.pool.close()


def test_a_burst_of_200_submissions_opens_one_connection() -> None:
    handle, secrets = stack_cluster()
    pool = SshPool(secrets, TEST_POOL)
    gateway = SlurmClusterGateway(pool)
    stamp = time.time_ns() % 10**9
    request = SimulationRequest.parse({"command": ["true"]})
    headers = [
        RunHeader(
            f"burst{stamp:09d}-{i:03d}", PROJECT, Requester("s", "ada"), request, datetime.now(UTC)
        )
        for i in range(200)
    ]
    ids: list[str] = []
    lock = threading.Lock()

    errors: list[BaseException] = []

    def submit_all(part: list[RunHeader]) -> None:
        try:
            for header in part:
                job_id = gateway.submit(handle, held(build_job_spec(header, handle)))
                with lock:
                    ids.append(job_id)
        except BaseException as exc:  # reported below, with the thread's story
            errors.append(exc)

    workers = [threading.Thread(target=submit_all, args=(headers[i::8],)) for i in range(8)]
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert errors == []
        assert len(ids) == len(set(ids)) == 200
        assert pool.connects == 1
        seen = gateway.poll(handle, ids)
        assert all(obs.state.value == "PENDING" for obs in seen.values())
    finally:
        slurm("scancel", "--user=" + stack().user("sim"), "--state=PENDING", check=False)
        pool.close()


def test_the_connection_to_openssh_negotiates_aes_gcm() -> None:
    """AES-GCM's tag is checked in OpenSSL; paramiko checks an HMAC in Python (20% of a
    command's CPU here): the pool offers it first, and OpenSSH takes it."""
    handle, secrets = stack_cluster()
    pool = SshPool(secrets, TEST_POOL)
    try:
        endpoint = Endpoint.of(handle, KeyRole.USER)
        assert pool.run(endpoint, ["true"]).ok
        transport = pool.connection(endpoint).transport
        assert transport.local_cipher == transport.remote_cipher == "aes128-gcm@openssh.com"
    finally:
        pool.close()


def test_a_run_folder_that_cannot_be_made_submits_nothing_and_says_why() -> None:
    """The files and sbatch go in one command: sbatch runs only once every file is written."""
    handle, secrets = stack_cluster()
    pool = SshPool(secrets, TEST_POOL)
    gateway = SlurmClusterGateway(pool)
    request = SimulationRequest.parse({"command": ["true"]})
    header = RunHeader(
        f"nofolder{time.time_ns() % 10**9:09d}",
        PROJECT,
        Requester("s", "ada"),
        request,
        datetime.now(UTC),
    )
    spec = dataclasses.replace(build_job_spec(header, handle), run_folder="/proc/obp-denied/run")
    try:
        with pytest.raises(ClusterUnreachable, match="cannot write the job files") as raised:
            gateway.submit(handle, spec)
        assert "obp-denied" in str(raised.value)  # the shell's own words on what failed
        assert gateway.find_by_tag(handle, header.tag) is None
    finally:
        pool.close()
