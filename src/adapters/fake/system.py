"""Clock, ids and events for tests and the demo."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunEvent
from obp_workflow.ports.system import Clock, EventPublisher, IdGenerator


class ManualClock(Clock):
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)

    def set(self, when: datetime) -> None:
        self._now = when


class SequentialIds(IdGenerator):
    """Readable, deterministic run ids: ``run-00000001``, ``run-00000002``, ..."""

    def __init__(self, prefix: str = "run") -> None:
        self._prefix = prefix
        self._n = 0
        self._lock = threading.Lock()

    def new_run_id(self) -> str:
        with self._lock:
            self._n += 1
            return f"{self._prefix}-{self._n:08d}"


class RecordingPublisher(EventPublisher):
    """Keeps every published event, in order; optionally calls a listener."""

    def __init__(self) -> None:
        self.published: list[tuple[ProjectRef, str, RunEvent]] = []

    def publish(self, project: ProjectRef, run_id: str, event: RunEvent) -> None:
        self.published.append((project, run_id, event))
