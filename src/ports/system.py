from __future__ import annotations

from abc import abstractmethod
from datetime import datetime
from typing import Protocol, runtime_checkable

from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunEvent


@runtime_checkable
class Clock(Protocol):
    @abstractmethod
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""


@runtime_checkable
class IdGenerator(Protocol):
    @abstractmethod
    def new_run_id(self) -> str:
        """A fresh run id matching ``obp_workflow.core.jobspec.RUN_ID``."""


@runtime_checkable
class EventPublisher(Protocol):
    @abstractmethod
    def publish(self, project: ProjectRef, run_id: str, event: RunEvent) -> None:
        """Tell the world about a recorded change. Best effort: must not raise."""
