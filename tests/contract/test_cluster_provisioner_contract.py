"""The ClusterProvisioner contract: each project's cluster, ready with a usable handle.

Two parts. What every provisioner promises (``cluster_provisioner_harness``): a requested
cluster becomes READY with a handle the pipeline can use, whether it is created on request or is
there already. What a provisioner that creates a cluster per project also promises
(``creating_provisioner_harness``): the creation unfolds (in progress, then ready or failed),
counts once per cluster, and is undone by ``delete``.
"""

from __future__ import annotations

import base64
import posixpath
import re

import pytest

from obp_workflow.core.cluster import (
    SAFE_PATH,
    ClusterHandle,
    LustreStorage,
    ProvisioningPhase,
    ProvisioningStatus,
    SharedStorage,
)
from obp_workflow.core.identity import ProjectRef
from tests.contract.harness import (
    PROJECT_A,
    PROJECT_B,
    ClusterProvisionerHarness,
    CreatingProvisionerHarness,
)

P = ProvisioningPhase
HOST_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384")
#: A project has a cluster or is getting one: never FAILED or NOT_FOUND once requested.
ON_ITS_WAY = (P.IN_PROGRESS, P.READY)


def assert_usable(handle: ClusterHandle | None) -> ClusterHandle:
    """What the pipeline relies on in a READY handle: the name it records on the run, where and
    as whom it connects (host, port, user, key references, the pinned host key), where the run
    folders are (runs root) and how outputs leave (storage)."""
    assert handle is not None
    for word in (handle.name, handle.host, handle.ssh_user):
        assert re.fullmatch(r"\S+", word), f"{word!r} is one word"
    assert 0 < handle.port < 65536
    assert handle.user_key.ref
    assert handle.admin_key.ref
    assert isinstance(handle.host_key, str), "the contract's clusters have a pinned host key"
    key_type, key_body, *_ = handle.host_key.split()
    assert key_type in HOST_KEY_TYPES, "the host key is pinned, with its type"
    assert len(key_body) >= 16
    base64.b64decode(key_body, validate=True)
    assert SAFE_PATH.fullmatch(handle.runs_root), handle.runs_root
    assert handle.runs_root.startswith("/")
    folder = handle.run_folder("run-1")
    assert posixpath.dirname(folder) == posixpath.normpath(handle.runs_root)
    if isinstance(handle.storage, LustreStorage):
        lustre = handle.storage
        assert lustre.fsx_id
        assert lustre.bucket
        assert lustre.mount_path.startswith("/")
        assert lustre.s3_key(posixpath.join(folder, "out.h5")), "runs are archived by the HSM"
    else:
        assert isinstance(handle.storage, SharedStorage)
        assert handle.storage.path.startswith("/")
    return handle


def assert_created(handle: ClusterHandle | None) -> ClusterHandle:
    """A usable handle of a cluster created for its project."""
    handle = assert_usable(handle)
    assert handle.user_key != handle.admin_key, "jobs and the elevated sync use different keys"
    return handle


# ==================================================================== every provisioner


def test_a_requested_cluster_becomes_ready_with_a_usable_handle(
    cluster_provisioner_harness: ClusterProvisionerHarness,
) -> None:
    h = cluster_provisioner_harness
    requested = h.provisioner.request(PROJECT_A)
    assert requested.phase in ON_ITS_WAY, requested.detail
    h.let_creation_finish(PROJECT_A)
    ready = h.provisioner.describe(PROJECT_A)
    assert ready.phase is P.READY, ready.detail
    handle = assert_usable(ready.cluster)
    if requested.cluster is not None:
        assert requested.cluster == handle, "a cluster ready at once is the one described"
    assert h.provisioner.describe(PROJECT_A).cluster == handle, "a ready cluster stays the same"


def test_requesting_again_changes_nothing(
    cluster_provisioner_harness: ClusterProvisionerHarness,
) -> None:
    h = cluster_provisioner_harness
    for status in (h.provisioner.request(PROJECT_A), h.provisioner.request(PROJECT_A)):
        assert status.phase in ON_ITS_WAY, status.detail
    h.let_creation_finish(PROJECT_A)
    handle = assert_usable(h.provisioner.describe(PROJECT_A).cluster)
    for _ in range(2):
        again = h.provisioner.request(PROJECT_A)
        assert again.phase is P.READY, again.detail
        assert again.cluster == handle


def test_after_a_request_describe_answers_and_a_ready_cluster_stays_ready(
    cluster_provisioner_harness: ClusterProvisionerHarness,
) -> None:
    h = cluster_provisioner_harness
    h.provisioner.request(PROJECT_A)
    seen: list[ProvisioningStatus] = [h.provisioner.describe(PROJECT_A) for _ in range(3)]
    h.let_creation_finish(PROJECT_A)
    seen += [h.provisioner.describe(PROJECT_A) for _ in range(2)]
    phases = [status.phase for status in seen]
    assert all(phase in ON_ITS_WAY for phase in phases), [s.detail for s in seen]
    first_ready = phases.index(P.READY)
    assert phases[first_ready:] == [P.READY] * (len(phases) - first_ready)
    assert len({assert_usable(s.cluster) for s in seen[first_ready:]}) == 1


@pytest.mark.parametrize("project", [PROJECT_A, PROJECT_B], ids=["a", "b"])
def test_describe_never_raises_and_answers_the_same_for_a_project_never_requested(
    cluster_provisioner_harness: ClusterProvisionerHarness, project: ProjectRef
) -> None:
    h = cluster_provisioner_harness
    answers = [h.provisioner.describe(project) for _ in range(3)]
    assert answers[0].phase in (P.NOT_FOUND, P.READY), answers[0].detail
    assert [a.phase for a in answers] == [answers[0].phase] * 3
    assert [a.cluster for a in answers] == [answers[0].cluster] * 3
    if answers[0].cluster is not None:
        assert_usable(answers[0].cluster)


def test_deleting_is_never_an_error_and_a_new_request_gets_a_usable_cluster(
    cluster_provisioner_harness: ClusterProvisionerHarness,
) -> None:
    h = cluster_provisioner_harness
    h.provisioner.delete(PROJECT_B)  # never requested
    h.provisioner.delete(PROJECT_B)
    h.provisioner.request(PROJECT_A)
    h.let_creation_finish(PROJECT_A)
    assert h.provisioner.describe(PROJECT_A).phase is P.READY
    h.provisioner.delete(PROJECT_A)
    h.provisioner.delete(PROJECT_A)
    assert h.provisioner.describe(PROJECT_A).phase is not P.FAILED
    assert h.provisioner.request(PROJECT_A).phase in ON_ITS_WAY
    h.let_creation_finish(PROJECT_A)
    ready = h.provisioner.describe(PROJECT_A)
    assert ready.phase is P.READY, ready.detail
    assert_usable(ready.cluster)


def test_two_projects_each_get_a_usable_cluster(
    cluster_provisioner_harness: ClusterProvisionerHarness,
) -> None:
    h = cluster_provisioner_harness
    h.provisioner.request(PROJECT_A)
    h.let_creation_finish(PROJECT_A)
    a = h.provisioner.describe(PROJECT_A)
    assert_usable(a.cluster)
    h.provisioner.request(PROJECT_B)
    h.let_creation_finish(PROJECT_B)
    b = h.provisioner.describe(PROJECT_B)
    assert b.phase is P.READY, b.detail
    assert_usable(b.cluster)
    assert h.provisioner.describe(PROJECT_A) == a, "another project's cluster changes nothing"


# ==================================================================== provisioners that create


def test_describe_of_a_project_without_a_cluster_is_not_found(
    creating_provisioner_harness: CreatingProvisionerHarness,
) -> None:
    status = creating_provisioner_harness.provisioner.describe(PROJECT_A)
    assert status.phase is P.NOT_FOUND
    assert status.cluster is None


def test_request_is_idempotent(creating_provisioner_harness: CreatingProvisionerHarness) -> None:
    h = creating_provisioner_harness
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
    creating_provisioner_harness: CreatingProvisionerHarness,
) -> None:
    h = creating_provisioner_harness
    requested = h.provisioner.request(PROJECT_A)
    assert requested.phase is P.IN_PROGRESS
    assert requested.cluster is None
    creating = h.provisioner.describe(PROJECT_A)
    assert creating.phase is P.IN_PROGRESS
    assert creating.cluster is None
    h.let_creation_finish(PROJECT_A)
    ready = h.provisioner.describe(PROJECT_A)
    assert ready.phase is P.READY
    handle = assert_created(ready.cluster)
    assert h.provisioner.describe(PROJECT_A).cluster == handle, "a ready cluster stays the same"
    assert h.provisioner.request(PROJECT_A).cluster == handle


def test_a_failed_creation_is_failed_with_its_reason(
    creating_provisioner_harness: CreatingProvisionerHarness,
) -> None:
    h = creating_provisioner_harness
    h.fail_next_creation(PROJECT_A, "insufficient capacity for c7i.48xlarge")
    h.provisioner.request(PROJECT_A)
    h.let_creation_finish(PROJECT_A)
    for _ in range(2):
        status = h.provisioner.describe(PROJECT_A)
        assert status.phase is P.FAILED
        assert status.cluster is None
        assert "insufficient capacity for c7i.48xlarge" in status.detail


def test_delete_then_describe_is_not_found(
    creating_provisioner_harness: CreatingProvisionerHarness,
) -> None:
    h = creating_provisioner_harness
    h.provisioner.request(PROJECT_A)
    h.let_creation_finish(PROJECT_A)
    h.provisioner.delete(PROJECT_A)
    assert h.provisioner.describe(PROJECT_A).phase is P.NOT_FOUND


def test_deleting_a_project_without_a_cluster_is_not_an_error(
    creating_provisioner_harness: CreatingProvisionerHarness,
) -> None:
    h = creating_provisioner_harness
    h.provisioner.delete(PROJECT_B)
    h.provisioner.delete(PROJECT_B)
    assert h.provisioner.describe(PROJECT_B).phase is P.NOT_FOUND


def test_after_deleting_a_failed_cluster_a_new_request_creates_a_fresh_one(
    creating_provisioner_harness: CreatingProvisionerHarness,
) -> None:
    h = creating_provisioner_harness
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
    assert_created(h.provisioner.describe(PROJECT_A).cluster)


def test_projects_have_their_own_clusters(
    creating_provisioner_harness: CreatingProvisionerHarness,
) -> None:
    h = creating_provisioner_harness
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
    creating_provisioner_harness: CreatingProvisionerHarness, project: ProjectRef
) -> None:
    h = creating_provisioner_harness
    for _ in range(3):
        assert h.provisioner.describe(project).phase is P.NOT_FOUND


def test_each_project_gets_a_cluster_of_its_own(
    creating_provisioner_harness: CreatingProvisionerHarness,
) -> None:
    h = creating_provisioner_harness
    for project in (PROJECT_A, PROJECT_B):
        h.provisioner.request(project)
        h.let_creation_finish(project)
    a = assert_created(h.provisioner.describe(PROJECT_A).cluster)
    b = assert_created(h.provisioner.describe(PROJECT_B).cluster)
    assert a.name != b.name
    assert h.creations() == 2
