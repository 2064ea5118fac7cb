from __future__ import annotations

from abc import abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import JobWatch, RunBrief, RunState, SimulationRun


@dataclass(frozen=True)
class Page:
    runs: Sequence[SimulationRun]
    next_cursor: str | None


@runtime_checkable
class RunRepository(Protocol):
    """Durable runs, with optimistic concurrency on ``version``."""

    @abstractmethod
    def add(self, run: SimulationRun) -> None:
        """Store a new run. Conflict when its id exists, IdempotencyConflict when its
        idempotency key is already taken in the project."""

    @abstractmethod
    def get(self, project: ProjectRef, run_id: str) -> SimulationRun:
        """NotFound when the project has no such run."""

    @abstractmethod
    def save(self, run: SimulationRun, expected_version: int) -> None:
        """Store ``run`` if the stored version is still ``expected_version``; else Conflict."""

    @abstractmethod
    def find_by_idempotency_key(self, project: ProjectRef, key: str) -> SimulationRun | None: ...

    @abstractmethod
    def list(
        self,
        project: ProjectRef,
        states: Collection[RunState] | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        """A project's runs, newest first. The cursor is opaque and bound to the project and
        filter: a cursor from elsewhere is InvalidRequest."""

    @abstractmethod
    def list_active(self, project: ProjectRef | None = None) -> Sequence[RunBrief]:
        """``run.brief()`` of every run not yet terminal, as of its last save: a light
        projection, read without loading the runs. A worker asks for its own project (cheap
        whatever the number of projects); all projects at once is for operators and tests."""

    @abstractmethod
    def list_watched(self, project: ProjectRef | None = None) -> Sequence[JobWatch]:
        """``run.watch()`` of every run that has a job to watch, as of its last save (of one
        project, or, for operators and tests, of all)."""
