"""The ClusterProvisioner contract: one cluster per project, created asynchronously."""

from __future__ import annotations

import pytest

from obp_workflow.core.cluster import ClusterHandle, ProvisioningPhase, ProvisioningStatus
from obp_workflow.core.identity import ProjectRef
from tests.contract.harness import PROJECT_A, PROJECT_B, ClusterProvisionerHarness

P = ProvisioningPhase
HOST_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384")


def assert_usable(handle: ClusterHandle | None) -> ClusterHandle:
    assert handle is not None
    key_type, key_body, *_ = handle.host_key.split()
    assert key_type in HOST_KEY_TYPES, "the host key is pinned, with its type"
    assert len(key_body) >= 16
    assert handle.user_key.ref
    assert handle.admin_key.ref
    assert handle.user_key != handle.admin_key, "jobs and the elevated sync use different keys"
    assert handle.host
    assert handle.ssh_user
    assert handle.runs_root.startswith("/")
    return handle


def test_describe_of_a_project_without_a_cluster_is_not_found(
    cluster_provisioner_harness: ClusterProvisionerHarness,
) -> None:
    status = cluster_provisioner_harness.provisioner.describe(PROJECT_A)
    assert status.phase is P.NOT_FOUND
    assert status.cluster is None


def test_request_is_idempotent(cluster_provisioner_harness: ClusterProvisionerHarness) -> None:
    h = cluster_provisioner_harness
    before = h.creations()
    first = h.provisioner.request(PROJECT_A)
    second = h.provisioner.request(PROJECT_A)
    assert h.creations() == before + 1
    for status in (first, second):
        assert status.phase in (P.IN_PROGRESS, P.READY)
    h.let_creation_finish(PROJECT_A)
    h.provisioner.request(PROJECT_A)
    assert h.creations() == before + 1


def test_a_requested_cluster_is_in_progress_then_ready_with_a_usable_handle(
    cluster_provisioner_harness: ClusterProvisionerHarness,
) -> None:
    h = cluster_provisioner_harness
    requested = h.provisioner.request(PROJECT_A)
    assert requested.phase is P.IN_PROGRESS
    assert requested.cluster is None
    creating = h.provisioner.describe(PROJECT_A)
    assert creating.phase is P.IN_PROGRESS
    assert creating.cluster is None
    h.let_creation_finish(PROJECT_A)
    ready = h.provisioner.describe(PROJECT_A)
    assert ready.phase is P.READY
    handle = assert_usable(ready.cluster)
    assert h.provisioner.describe(PROJECT_A).cluster == handle, "a ready cluster stays the same"
    assert h.provisioner.request(PROJECT_A).cluster == handle


def test_a_failed_creation_is_failed_with_its_reason(
    cluster_provisioner_harness: ClusterProvisionerHarness,
) -> None:
    h = cluster_provisioner_harness
    h.fail_next_creation(PROJECT_A, "insufficient capacity for c7i.48xlarge")
    h.provisioner.request(PROJECT_A)
    h.let_creation_finish(PROJECT_A)
    for _ in range(2):
        status = h.provisioner.describe(PROJECT_A)
        assert status.phase is P.FAILED
        assert status.cluster is None
        assert "insufficient capacity for c7i.48xlarge" in status.detail


def test_delete_then_describe_is_not_found(
    cluster_provisioner_harness: ClusterProvisionerHarness,
) -> None:
    h = cluster_provisioner_harness
    h.provisioner.request(PROJECT_A)
    h.let_creation_finish(PROJECT_A)
    h.provisioner.delete(PROJECT_A)
    assert h.provisioner.describe(PROJECT_A).phase is P.NOT_FOUND


def test_deleting_a_project_without_a_cluster_is_not_an_error(
    cluster_provisioner_harness: ClusterProvisionerHarness,
) -> None:
    h = cluster_provisioner_harness
    h.provisioner.delete(PROJECT_B)
    h.provisioner.delete(PROJECT_B)
    assert h.provisioner.describe(PROJECT_B).phase is P.NOT_FOUND


def test_after_deleting_a_failed_cluster_a_new_request_creates_a_fresh_one(
    cluster_provisioner_harness: ClusterProvisionerHarness,
) -> None:
    h = cluster_provisioner_harness
    h.fail_next_creation(PROJECT_A, "insufficient capacity")
    h.provisioner.request(PROJECT_A)
    h.let_creation_finish(PROJECT_A)
    assert h.provisioner.describe(PROJECT_A).phase is P.FAILED
    h.provisioner.delete(PROJECT_A)
    before = h.creations()
    again = h.provisioner.request(PROJECT_A)
    assert h.creations() == before + 1
    assert again.phase is P.IN_PROGRESS, again.detail
    h.let_creation_finish(PROJECT_A)
    assert_usable(h.provisioner.describe(PROJECT_A).cluster)


def test_projects_have_their_own_clusters(
    cluster_provisioner_harness: ClusterProvisionerHarness,
) -> None:
    h = cluster_provisioner_harness
    h.fail_next_creation(PROJECT_B, "quota")
    for project in (PROJECT_A, PROJECT_B):
        h.provisioner.request(project)
        h.let_creation_finish(project)
    a: ProvisioningStatus = h.provisioner.describe(PROJECT_A)
    assert a.phase is P.READY
    assert h.provisioner.describe(PROJECT_B).phase is P.FAILED
    h.provisioner.delete(PROJECT_B)
    assert h.provisioner.describe(PROJECT_A) == a


@pytest.mark.parametrize("project", [PROJECT_A, PROJECT_B], ids=["a", "b"])
def test_describe_never_raises_for_a_missing_cluster(
    cluster_provisioner_harness: ClusterProvisionerHarness, project: ProjectRef
) -> None:
    h = cluster_provisioner_harness
    for _ in range(3):
        assert h.provisioner.describe(project).phase is P.NOT_FOUND
