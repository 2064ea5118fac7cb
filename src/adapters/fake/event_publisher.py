"""An EventPublisher that keeps what it is given."""

from __future__ import annotations

from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunEvent
from obp_workflow.ports.system import EventPublisher


class FakeEventPublisher(EventPublisher):
    """Keeps every published event, in order."""

    def __init__(self) -> None:
        self.published: list[tuple[ProjectRef, str, RunEvent]] = []

    def publish(self, project: ProjectRef, run_id: str, event: RunEvent) -> None:
        self.published.append((project, run_id, event))
