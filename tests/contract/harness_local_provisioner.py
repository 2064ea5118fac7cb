"""The static ClusterProvisioner of the one-machine family, against the provisioner contract.

That contract describes a provisioner that creates a cluster per project on request: absent
until asked for, in progress, then ready or failed, gone when deleted. A static provisioner
answers every project with one cluster that is already there, creates nothing and deletes
nothing; every test of the contract observes creation, failure or deletion, so none applies.
The harness says so, test by test, in ``NOT_APPLICABLE`` (the contract's conftest leaves those
tests out and prints each reason); what the static provisioner does promise is proven in
``tests/integration/test_local_static_provisioner.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from obp_workflow.adapters.local.cluster_provisioner import StaticClusterProvisioner
from obp_workflow.core.cluster import ClusterHandle, SecretRef, SharedStorage
from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.cluster import ClusterProvisioner

if TYPE_CHECKING:
    from tests.contract.harness import ClusterProvisionerHarness

_ALWAYS_READY = "a static cluster exists for every project: there is none to be NOT_FOUND"
_NEVER_CREATED = "a static cluster is never created: it is READY at once, never IN_PROGRESS"
_NEVER_FAILS = "a static cluster is never created, so its creation cannot fail"
_NEVER_DELETED = "a static cluster serves every project: delete leaves it READY"

#: Test of the ClusterProvisioner contract -> why it does not apply to a static cluster.
NOT_APPLICABLE = {
    "test_describe_of_a_project_without_a_cluster_is_not_found": _ALWAYS_READY,
    "test_request_is_idempotent": "it counts creations, and a static cluster has none to count",
    "test_a_requested_cluster_is_in_progress_then_ready_with_a_usable_handle": _NEVER_CREATED,
    "test_a_failed_creation_is_failed_with_its_reason": _NEVER_FAILS,
    "test_delete_then_describe_is_not_found": _NEVER_DELETED,
    "test_deleting_a_project_without_a_cluster_is_not_an_error": _ALWAYS_READY,
    "test_after_deleting_a_failed_cluster_a_new_request_creates_a_fresh_one": _NEVER_FAILS,
    "test_projects_have_their_own_clusters": "one static cluster serves every project",
    "test_describe_never_raises_for_a_missing_cluster": _ALWAYS_READY,
}


def static_cluster() -> ClusterHandle:
    """A Slurm cluster reached over SSH, as the one-machine family's settings describe one."""
    return ClusterHandle(
        name="local-slurm",
        host="127.0.0.1",
        port=2222,
        ssh_user="obpsim",
        user_key=SecretRef("local-slurm-user-key"),
        admin_key=SecretRef("local-slurm-admin-key"),
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfTheLocalSlurmCluster00000000000",
        storage=SharedStorage("/srv/obp"),
        runs_root="/srv/obp/runs",
        admin_user="obpadmin",
    )


class StaticClusterProvisionerHarness:
    NOT_APPLICABLE = NOT_APPLICABLE

    def __init__(self) -> None:
        self.static = StaticClusterProvisioner(static_cluster())
        self.provisioner: ClusterProvisioner = self.static

    def creations(self) -> int:
        return 0  # nothing is ever created

    def fail_next_creation(self, project: ProjectRef, reason: str) -> None:
        raise NotImplementedError(_NEVER_FAILS)

    def let_creation_finish(self, project: ProjectRef) -> None:
        pass  # nothing is ever in progress

    def close(self) -> None:
        pass


if TYPE_CHECKING:  # mypy proves the harness implements the harness protocol
    _provisioners: list[Callable[[], ClusterProvisionerHarness]] = [StaticClusterProvisionerHarness]
