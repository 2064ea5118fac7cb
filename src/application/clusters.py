"""Where each project's cluster is: the provisioner's answer, reused for a short while."""

from __future__ import annotations

from datetime import datetime, timedelta

from obp_workflow.core.cluster import ClusterHandle
from obp_workflow.core.errors import ClusterUnreachable
from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.cluster import ClusterProvisioner
from obp_workflow.ports.system import Clock


class ClusterDirectory:
    def __init__(
        self, cluster_provisioner: ClusterProvisioner, clock: Clock, ttl: timedelta
    ) -> None:
        self.cluster_provisioner = cluster_provisioner
        self.clock = clock
        self.ttl = ttl
        self._clusters: dict[ProjectRef, tuple[ClusterHandle, datetime]] = {}

    def cluster_of(self, project: ProjectRef) -> ClusterHandle:
        """The project's ready cluster; ``ClusterUnreachable`` when there is none (yet)."""
        cached = self._clusters.get(project)
        now = self.clock.now()
        if cached is not None and now - cached[1] < self.ttl:
            return cached[0]
        status = self.cluster_provisioner.describe(project)
        if status.cluster is None:
            raise ClusterUnreachable(
                f"the project's cluster is not available ({status.phase.value}"
                + (f": {status.detail})" if status.detail else ")")
            )
        self.remember(project, status.cluster)
        return status.cluster

    def remember(self, project: ProjectRef, cluster: ClusterHandle) -> None:
        self._clusters[project] = (cluster, self.clock.now())
