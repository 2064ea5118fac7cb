"""Host keys accepted on first use (``OBP_HOST_KEY_POLICY=accept-new``) against the stack's real
OpenSSH server.

The first connection to a cluster with no pinned key pins the key it is shown by creating the
cluster's host-key secret; every later connection (another pool: a restarted worker) pins that
key; a head node that changed its key afterwards (a second real sshd with a key of its own) is
refused and the run goes STALE, never FAILED; the ``pinned`` policy still refuses a cluster with
no published key; connections racing to pin end with one stored key. Each test runs over the
in-memory store and over Secrets Manager (moto).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

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
from obp_workflow.adapters.provisioner.description import (
    HostKeyPolicy,
    ProvisionerSettings,
    host_key_from_secrets,
    status_of,
)
from obp_workflow.adapters.ssh.connection import Endpoint, SshPool
from obp_workflow.adapters.ssh.slurm import SlurmClusterGateway
from obp_workflow.adapters.system.clock import SystemClock
from obp_workflow.core.cluster import (
    AcceptNewHostKey,
    ClusterHandle,
    KeyRole,
    ProvisioningPhase,
    SecretRef,
)
from obp_workflow.core.errors import (
    HostKeyRejected,
    SecretExists,
    SecretNotFound,
    ServiceUnavailable,
)
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState
from obp_workflow.ports.secrets import Secret, SecretStore
from tests.application import application
from tests.contract.harness_aws import SecretsManagerSecretStoreHarness
from tests.contract.harness_slurm import TEST_POOL, stack_cluster
from tests.stack import slurm, sshd_with_another_host_key, stack

pytestmark = pytest.mark.stack

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = ProjectRef.parse(VLAB, "3d9a6c1e-7b2f-4e8d-a5c4-1f0e9b8d7a60")
USER = Principal("subject-ada", "ada", parse_groups([f"/proj/{VLAB}/{PROJECT.project_id}/member"]))


@dataclass
class Keys:
    """A secret store holding the stack's user and admin keys, and how often it was asked to
    create a secret."""

    store: SecretStore
    user_key: SecretRef
    admin_key: SecretRef
    creates: Callable[[], int]


def fake_keys() -> Keys:
    _, stack_secrets = stack_cluster()
    return Keys(
        stack_secrets,
        SecretRef("stack/user-key"),
        SecretRef("stack/admin-key"),
        lambda: stack_secrets.faults.calls["create"],
    )


def secrets_manager_keys() -> Keys:
    h = SecretsManagerSecretStoreHarness()
    user_key = h.put("stack-user-key", stack().private_key("sim"))
    admin_key = h.put("stack-admin-key", stack().private_key("admin"))
    created = [0]

    def count(**_kwargs: Any) -> None:
        created[0] += 1

    h.client.meta.events.register("before-call.secrets-manager.CreateSecret", count)
    return Keys(h.store, user_key, admin_key, lambda: created[0])


@pytest.fixture(params=[fake_keys, secrets_manager_keys], ids=["fake", "secretsmanager"])
def keys(request: pytest.FixtureRequest) -> Keys:
    made: Keys = request.param()
    return made


def cluster_name() -> str:
    return f"pcluster-hk{time.time_ns() % 10**12:012d}"


def accept_new(keys: Keys, name: str | None = None) -> ClusterHandle:
    """The stack as a cluster with no host key pinned yet (what the provisioner's description
    gives under accept-new)."""
    handle, _ = stack_cluster()
    name = name or cluster_name()
    return dataclasses.replace(
        handle,
        name=name,
        user_key=keys.user_key,
        admin_key=keys.admin_key,
        host_key=AcceptNewHostKey(SecretRef(f"{name}-host-key")),
    )


def pin_of(handle: ClusterHandle) -> SecretRef:
    assert isinstance(handle.host_key, AcceptNewHostKey)
    return handle.host_key.pin_to


def same_key(a: str, b: str) -> bool:
    return a.split()[:2] == b.split()[:2]


def whoami(pool: SshPool, handle: ClusterHandle, role: KeyRole = KeyRole.USER) -> str:
    return pool.run(Endpoint.of(handle, role), ["whoami"]).text().strip()


# ==================================================================== first use, later uses


def test_the_first_connection_pins_the_key_shown_and_later_connections_use_it(keys: Keys) -> None:
    handle = accept_new(keys)
    with pytest.raises(SecretNotFound):
        keys.store.get(pin_of(handle))
    pool = SshPool(keys.store, TEST_POOL)
    try:
        assert whoami(pool, handle) == stack().user("sim")
        assert same_key(keys.store.get(pin_of(handle)).reveal(), stack().host_key)
        assert keys.creates() == 1
        # Another login on the same cluster, by the handle still saying "accept new" (the
        # cluster directory keeps a handle a while): the key is read from the store.
        assert whoami(pool, handle, KeyRole.ADMIN) == stack().user("admin")
        assert pool.connects == 2
    finally:
        pool.close()
    restarted = SshPool(keys.store, TEST_POOL)  # another worker, or this one after a restart
    try:
        assert whoami(restarted, handle) == stack().user("sim")
        published = host_key_from_secrets(keys.store, policy="accept-new")(handle.name)
        assert isinstance(published, str)
        assert same_key(published, stack().host_key)  # what the provisioner now describes
        assert whoami(restarted, dataclasses.replace(handle, host_key=published), KeyRole.ADMIN)
        assert restarted.connects == 2
    finally:
        restarted.close()
    assert keys.creates() == 1  # pinned once, never again


def test_one_connection_per_login_even_when_the_handle_pins_its_first_key_meanwhile(
    keys: Keys,
) -> None:
    handle = accept_new(keys)
    pool = SshPool(keys.store, TEST_POOL)
    try:
        whoami(pool, handle)
        pinned = dataclasses.replace(handle, host_key=keys.store.get(pin_of(handle)).reveal())
        for _ in range(3):
            whoami(pool, pinned)
            whoami(pool, handle)
        assert pool.connects == 1
    finally:
        pool.close()


# ==================================================================== a changed key afterwards


def test_a_key_changed_after_its_first_use_is_refused_and_the_run_goes_stale_not_failed(
    keys: Keys, tmp_path: Path
) -> None:
    handle = accept_new(keys)
    pool = SshPool(keys.store, TEST_POOL)
    try:
        whoami(pool, handle)
    finally:
        pool.close()
    with sshd_with_another_host_key(tmp_path) as (port, other_key):
        changed = dataclasses.replace(handle, port=port)  # the head node, with its new key
        stored = keys.store.get(pin_of(handle)).reveal()
        for host_key in (changed.host_key, stored):  # cached handle, or described afresh
            pool = SshPool(keys.store, TEST_POOL)
            try:
                with pytest.raises(HostKeyRejected, match="not the pinned one"):
                    whoami(pool, dataclasses.replace(changed, host_key=host_key))
                assert pool.connects == 0
            finally:
                pool.close()
        assert same_key(keys.store.get(pin_of(handle)).reveal(), stack().host_key)
        assert not same_key(other_key, stack().host_key)

        pool = SshPool(keys.store, TEST_POOL)
        graph = FakeKnowledgeGraph()
        clock = SystemClock()
        repo = FakeRunRepository()
        service = application(
            run_repository=repo,
            cluster_provisioner=FakeClusterProvisioner(
                ready_after=0, cluster_for=lambda _p: changed
            ),
            cluster_gateway=SlurmClusterGateway(pool),
            data_synchronizer=FakeDataSynchronizer(FakeClusterGateway(), FakeObjectStore(), graph),
            knowledge_graph=graph,
            instance_orchestrator=FakeInstanceOrchestrator(clock),
            clock=clock,
            id_generator=FakeIdGenerator(prefix=f"hk{time.time_ns() % 10**9:09d}"),
            event_publisher=FakeEventPublisher(),
        )
        request = SimulationRequest.parse({"command": ["true"]})
        run = service.requests.submit(USER, PROJECT, request)
        try:
            for _ in range(3):
                service.pipeline.advance(PROJECT, run.run_id)
            current = repo.get(PROJECT, run.run_id)
            assert current.state is RunState.SUBMITTING
            assert current.stale
            assert "host key" in (current.stale_reason or "")
            assert pool.connects == 0
        finally:
            pool.close()
            slurm("scancel", f"--name={run.header.tag}", check=False)
    assert same_key(keys.store.get(pin_of(handle)).reveal(), stack().host_key)


# ==================================================================== the two policies


def described(name: str) -> dict[str, Any]:
    """The provisioner's description of a complete cluster whose head node is the stack."""
    return {
        "clusterName": name,
        "clusterStatus": "CREATE_COMPLETE",
        "headNode": {"state": "running", "privateIpAddress": stack().host},
        "clusterFsxId": None,
        "vlab_id": PROJECT.virtual_lab_id,
        "project_id": PROJECT.project_id,
    }


def provisioner_settings(keys: Keys) -> ProvisionerSettings:
    return ProvisionerSettings(
        include_lustre=False,
        ssh_port=stack().port,
        ssh_user=stack().user("sim"),
        admin_user=stack().user("admin"),
        user_key_template=keys.user_key.ref,
        admin_key_template=keys.admin_key.ref,
        shared_path=str(Path(stack().home("sim")).parent),
    )


def describe(keys: Keys, name: str, policy: HostKeyPolicy) -> Any:
    host_key_for = host_key_from_secrets(keys.store, "{cluster_name}-host-key", policy)
    return status_of(
        PROJECT,
        described(name),
        provisioner_settings(keys),
        learned=None,
        host_key_for=host_key_for,
    )


def test_pinned_still_refuses_a_cluster_without_a_published_key_and_accept_new_pins_it(
    keys: Keys,
) -> None:
    name = cluster_name()
    refused = describe(keys, name, "pinned")
    assert refused.phase is ProvisioningPhase.UNKNOWN
    assert refused.cluster is None
    assert "host key is not available" in refused.detail
    assert f"{name}-host-key" in refused.detail

    ready = describe(keys, name, "accept-new")
    assert ready.phase is ProvisioningPhase.READY, ready.detail
    assert ready.cluster.host_key == AcceptNewHostKey(SecretRef(f"{name}-host-key"))
    assert keys.creates() == 0  # describing pins nothing: the first connection does
    pool = SshPool(keys.store, TEST_POOL)
    try:
        observed = SlurmClusterGateway(pool).poll(ready.cluster, ["1"])
        assert set(observed) == {"1"}
    finally:
        pool.close()
    for policy in ("pinned", "accept-new"):
        now = describe(keys, name, policy)  # type: ignore[arg-type]
        assert now.phase is ProvisioningPhase.READY, now.detail
        assert same_key(now.cluster.host_key, stack().host_key)


# ==================================================================== races


class MeetBeforeCreating(SecretStore):
    """The store under test, every ``create`` held until ``parties`` callers are at it: pools
    pinning at the same moment. Records how each creation ended."""

    def __init__(self, store: SecretStore, parties: int) -> None:
        self.store = store
        self._meet = threading.Barrier(parties, timeout=30)
        self.outcomes: list[str] = []

    def get(self, ref: SecretRef) -> Secret:
        return self.store.get(ref)

    def create(self, ref: SecretRef, value: str) -> None:
        self._meet.wait()
        try:
            self.store.create(ref, value)
        except SecretExists:
            self.outcomes.append("exists")
            raise
        self.outcomes.append("created")


def race(store: SecretStore, handles: list[ClusterHandle]) -> list[str | BaseException]:
    """Each handle's first connection, each from its own pool, all at once: ``whoami`` or the
    error."""
    results: list[str | BaseException] = [RuntimeError("no result")] * len(handles)
    pools = [SshPool(store, TEST_POOL) for _ in handles]

    def connect(i: int) -> None:
        try:
            results[i] = whoami(pools[i], handles[i])
        except BaseException as exc:  # compared by the test
            results[i] = exc

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(len(handles))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        for pool in pools:
            pool.close()
    return results


def test_pools_racing_to_pin_the_same_key_end_with_one_stored_key(keys: Keys) -> None:
    handle = accept_new(keys)
    store = MeetBeforeCreating(keys.store, 2)
    results = race(store, [handle, handle])
    assert results == [stack().user("sim")] * 2
    assert sorted(store.outcomes) == ["created", "exists"]
    assert same_key(keys.store.get(pin_of(handle)).reveal(), stack().host_key)


def test_of_pools_racing_to_pin_different_keys_the_loser_refuses_its_key(
    keys: Keys, tmp_path: Path
) -> None:
    handle = accept_new(keys)
    with sshd_with_another_host_key(tmp_path) as (port, other_key):
        impostor = dataclasses.replace(handle, port=port)
        store = MeetBeforeCreating(keys.store, 2)
        results = race(store, [handle, impostor])
    assert sorted(store.outcomes) == ["created", "exists"]
    stored = keys.store.get(pin_of(handle)).reveal()
    won = 0 if same_key(stored, stack().host_key) else 1
    assert same_key(stored, [stack().host_key, other_key][won])
    assert results[won] == stack().user("sim")
    lost = results[1 - won]
    assert isinstance(lost, HostKeyRejected), lost
    assert "pinned meanwhile" in lost.message
    assert pin_of(handle).ref in lost.message


def test_a_lost_reply_to_the_pinning_is_settled_by_the_next_connection() -> None:
    keys = fake_keys()
    assert isinstance(keys.store, FakeSecretStore)
    handle = accept_new(keys)
    keys.store.faults.lose_reply_next("create", ServiceUnavailable("no answer from the store"))
    pool = SshPool(keys.store, TEST_POOL)
    try:
        with pytest.raises(ServiceUnavailable, match="no answer"):
            whoami(pool, handle)
        assert pool.connects == 0
        assert same_key(keys.store.get(pin_of(handle)).reveal(), stack().host_key)
        assert whoami(pool, handle) == stack().user("sim")  # pinned by the lost creation
        assert keys.creates() == 1
    finally:
        pool.close()
