"""Saving a run's changes and telling the world about them, shared by every use case.

A use case loads a run, wraps it in :class:`Tracked`, changes it through its domain methods,
and commits it with :class:`RunRecorder`: the save is conditional on the version the repository
held when the run was read (a lost race is ``Conflict``), and each new event is published once
the save succeeded.
"""

from __future__ import annotations

from obp_workflow.core.errors import Conflict
from obp_workflow.core.run import SimulationRun
from obp_workflow.ports.runs import RunRepository
from obp_workflow.ports.system import EventPublisher


class Tracked:
    """A run being worked on, and the version the repository holds of it."""

    def __init__(self, run: SimulationRun) -> None:
        self.run = run
        self.saved = run.version

    @property
    def dirty(self) -> bool:
        return self.run.version != self.saved


class RunRecorder:
    def __init__(self, run_repository: RunRepository, event_publisher: EventPublisher) -> None:
        self.run_repository = run_repository
        self.event_publisher = event_publisher

    def add(self, run: SimulationRun) -> None:
        """Store a new run (``IdempotencyConflict`` when its key is taken) and publish it."""
        self.run_repository.add(run)
        self._publish(run, 0)

    def commit(self, tracked: Tracked) -> None:
        """Save what changed since the run was read; ``Conflict`` when someone else saved."""
        if not tracked.dirty:
            return
        self.run_repository.save(tracked.run, tracked.saved)
        published_from = tracked.saved
        tracked.saved = tracked.run.version
        self._publish(tracked.run, published_from)

    def save_if_changed(self, tracked: Tracked) -> bool:
        """Save a change; a lost race is left to the next round. True when it was saved."""
        if not tracked.dirty:
            return False
        try:
            self.commit(tracked)
        except Conflict:
            return False
        return True

    def _publish(self, run: SimulationRun, since_version: int) -> None:
        for event in run.events[since_version:]:
            self.event_publisher.publish(run.project, run.run_id, event)
