from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from obp_workflow.core.cluster import ClusterHandle
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import SyncOutcome, SyncPlan


@dataclass(frozen=True)
class SyncJobSubmitted:
    """The sync runs as an elevated job on the cluster; watch it, then confirm."""

    job_id: str


SyncStart = SyncJobSubmitted | SyncOutcome


@runtime_checkable
class DataSynchronizer(Protocol):
    """Moves a run's outputs off the cluster by the plan the DataSync policy chose."""

    @abstractmethod
    def start(
        self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan, attempt: int
    ) -> SyncStart:
        """Begin the sync. Lustre: submit the elevated archive job (idempotent per attempt) and
        return its id. Direct upload: upload, skipping files already there with the same
        digest, and return the outcome."""

    @abstractmethod
    def confirm(self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan) -> SyncOutcome:
        """Check that every output is at its destination; SyncIncomplete names those that
        are missing or short."""
