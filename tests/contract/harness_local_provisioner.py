"""The ClusterProvisioner contract against the static provisioner of the one-machine family.

A static provisioner answers every project with one cluster that is already there: it runs the
tests every provisioner passes (``cluster_provisioner_harness``), not those of creating clusters
(``creating_provisioner_harness``), since it creates none and so has no creation to observe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from obp_workflow.adapters.local.cluster_provisioner import StaticClusterProvisioner
from obp_workflow.core.cluster import ClusterHandle, SecretRef, SharedStorage
from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.cluster import ClusterProvisioner
from tests.contract.harness_provisioner import fake_host_key

if TYPE_CHECKING:
    from tests.contract.harness import ClusterProvisionerHarness


def static_cluster() -> ClusterHandle:
    """A Slurm cluster reached over SSH, as the one-machine family's settings describe one."""
    return ClusterHandle(
        name="local-slurm",
        host="127.0.0.1",
        port=2222,
        ssh_user="obpsim",
        user_key=SecretRef("local-slurm-user-key"),
        admin_key=SecretRef("local-slurm-admin-key"),
        host_key=fake_host_key("local-slurm"),
        storage=SharedStorage("/srv/obp"),
        runs_root="/srv/obp/runs",
        admin_user="obpadmin",
    )


class StaticClusterProvisionerHarness:
    def __init__(self) -> None:
        self.static = StaticClusterProvisioner(static_cluster())
        self.provisioner: ClusterProvisioner = self.static

    def let_creation_finish(self, project: ProjectRef) -> None:
        pass  # the cluster is there already: nothing is being created

    def close(self) -> None:
        pass


if TYPE_CHECKING:  # mypy proves the harness implements the harness protocol
    _provisioners: list[Callable[[], ClusterProvisionerHarness]] = [StaticClusterProvisionerHarness]
