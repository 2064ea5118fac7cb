from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from obp_workflow.core.jobs import JobAccounting
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import SyncOutcome


@dataclass(frozen=True)
class RunProvenance:
    """What the knowledge graph records of a finished run."""

    header: RunHeader
    cluster_name: str
    job_id: str
    started_at: datetime
    ended_at: datetime
    outcome: SyncOutcome
    exit_code: int | None = None
    #: The job's record in the scheduler's accounting, when the scheduler keeps one.
    accounting: JobAccounting | None = None


@dataclass(frozen=True)
class Registration:
    activity_id: str
    entity_ids: Sequence[str]


@dataclass(frozen=True)
class RecordedProvenance:
    """What the graph holds of one run, read back: its activity and one entity per output,
    each the JSON-LD document at its latest revision."""

    activity_id: str
    activity: Mapping[str, Any]
    entities: Sequence[Mapping[str, Any]]
    revision: int
    withdrawn: bool = False


@runtime_checkable
class KnowledgeGraph(Protocol):
    @abstractmethod
    def register(self, provenance: RunProvenance) -> Registration:
        """Record the run's activity and one entity per output. Ids are derived from the run:
        registering again updates, never duplicates.

        An output synchronised to the graph's own S3 storage bucket (``s3://`` location there)
        is registered as the graph's file, linked to the object, not copied; the object must
        be there with the size synchronised, else ``SyncIncomplete`` names the output and the
        activity is not written. Outputs elsewhere are recorded by their location."""

    @abstractmethod
    def withdraw(self, run: RunHeader) -> None:
        """Mark what a cancelled run registered (its activity and entities) as withdrawn.
        Idempotent; nothing happens when nothing was registered."""

    @abstractmethod
    def read(self, run: RunHeader) -> RecordedProvenance | None:
        """What the graph holds of the run (withdrawn included), or None when nothing was
        registered."""
