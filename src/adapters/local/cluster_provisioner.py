"""ClusterProvisioner of one machine: every project uses one cluster that is already there.

The cluster is given (the machine's own process cluster, or a Slurm cluster reached over SSH
as configured); nothing is created or deleted. ``request`` and ``describe`` answer READY with
it for every project; ``delete`` leaves it alone and logs that it did.
"""

from __future__ import annotations

import logging

from obp_workflow.core.cluster import ClusterHandle, ProvisioningPhase, ProvisioningStatus
from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.cluster import ClusterProvisioner

log = logging.getLogger(__name__)


class StaticClusterProvisioner(ClusterProvisioner):
    """Answers READY with ``cluster`` for every project."""

    def __init__(self, cluster: ClusterHandle) -> None:
        self.cluster = cluster
        self._ready = ProvisioningStatus(ProvisioningPhase.READY, cluster)

    def request(self, project: ProjectRef) -> ProvisioningStatus:
        return self._ready

    def describe(self, project: ProjectRef) -> ProvisioningStatus:
        return self._ready

    def delete(self, project: ProjectRef) -> None:
        log.info(
            "cluster %s of project %s not deleted: it is static and serves every project",
            self.cluster.name,
            project,
        )
