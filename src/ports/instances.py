from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from obp_workflow.core.identity import ProjectRef


@dataclass(frozen=True)
class InstanceInfo:
    """The project's workflow container instance."""

    project: ProjectRef
    instance_id: str
    status: str  # PROVISIONING, PENDING, RUNNING, STOPPING, STOPPED, ...
    started_at: datetime | None = None
    stop_reason: str | None = None

    @property
    def live(self) -> bool:
        return self.status not in ("STOPPED", "DEPROVISIONING", "STOPPING", "DEACTIVATING")


@runtime_checkable
class InstanceOrchestrator(Protocol):
    """One workflow container per Virtual Lab project."""

    @abstractmethod
    def ensure(self, project: ProjectRef) -> InstanceInfo:
        """The project's live instance, started when none is (concurrent calls start one)."""

    @abstractmethod
    def describe(self, project: ProjectRef) -> InstanceInfo | None: ...

    @abstractmethod
    def stop(self, project: ProjectRef, reason: str) -> None: ...
