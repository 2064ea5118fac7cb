"""An in-memory ParallelCluster Provisioner: clusters appear after a few looks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from obp_workflow.core.cluster import (
    ClusterHandle,
    LustreStorage,
    ProvisioningPhase,
    ProvisioningStatus,
    SecretRef,
    SharedStorage,
)
from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.cluster import ClusterProvisioner

from .faults import Faults

#: The Nexus data bucket behind the example clusters' data repository association.
EXAMPLE_BUCKET = "nexus-data-bucket"


def example_cluster(project: ProjectRef, *, lustre: bool = True) -> ClusterHandle:
    """A plausible cluster for a project, as the provisioner would describe it."""
    name = f"pcluster-{project.project_id[:8]}"
    storage: LustreStorage | SharedStorage = (
        LustreStorage("fs-0123456789abcdef0", "/obi/data", "/project", EXAMPLE_BUCKET)
        if lustre
        else SharedStorage("/home/sim")
    )
    runs_root = (
        f"/obi/data/project/{project.virtual_lab_id}/{project.project_id}/runs"
        if lustre
        else "/home/sim/runs"
    )
    return ClusterHandle(
        name=name,
        host="10.0.0.10",
        port=22,
        ssh_user="sim",
        user_key=SecretRef(f"arn:aws:secretsmanager:us-east-1:000000000000:secret:{name}-user"),
        admin_key=SecretRef(f"arn:aws:secretsmanager:us-east-1:000000000000:secret:{name}-admin"),
        host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeHostKeyForTestsOnly0000000000000000",
        storage=storage,
        runs_root=runs_root,
        admin_user="sim-admin",
    )


@dataclass
class _Stack:
    looks_left: int
    failed: str | None = None


class FakeClusterProvisioner(ClusterProvisioner):
    """``ready_after`` describes pass before a requested cluster is ready."""

    def __init__(
        self,
        *,
        ready_after: int = 1,
        cluster_for: Callable[[ProjectRef], ClusterHandle] = example_cluster,
    ) -> None:
        self.ready_after = ready_after
        self.cluster_for = cluster_for
        self.faults = Faults()
        self.creations = 0
        self._stacks: dict[ProjectRef, _Stack] = {}
        self._doomed: dict[ProjectRef, str] = {}
        self._lock = threading.Lock()

    def request(self, project: ProjectRef) -> ProvisioningStatus:
        self.faults.before("request")
        with self._lock:
            if project not in self._stacks:
                self.creations += 1
                self._stacks[project] = _Stack(self.ready_after, self._doomed.pop(project, None))
        self.faults.after("request")
        return self._status(project, look=False)

    def describe(self, project: ProjectRef) -> ProvisioningStatus:
        self.faults.before("describe")
        status = self._status(project, look=True)
        self.faults.after("describe")
        return status

    def delete(self, project: ProjectRef) -> None:
        with self._lock:
            self._stacks.pop(project, None)

    def fail_creation(self, project: ProjectRef, reason: str) -> None:
        """The next creation of this project's cluster ends in CREATE_FAILED."""
        self._doomed[project] = reason

    def _status(self, project: ProjectRef, *, look: bool) -> ProvisioningStatus:
        with self._lock:
            stack = self._stacks.get(project)
            if stack is None:
                return ProvisioningStatus(ProvisioningPhase.NOT_FOUND, detail="no cluster")
            if stack.failed:
                return ProvisioningStatus(ProvisioningPhase.FAILED, detail=stack.failed)
            if stack.looks_left > 0:
                if look:
                    stack.looks_left -= 1
                return ProvisioningStatus(
                    ProvisioningPhase.IN_PROGRESS, detail="CREATE_IN_PROGRESS"
                )
        return ProvisioningStatus(
            ProvisioningPhase.READY, self.cluster_for(project), "CREATE_COMPLETE"
        )
