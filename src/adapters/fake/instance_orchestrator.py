"""An in-memory InstanceOrchestrator: one workflow instance per project."""

from __future__ import annotations

import threading
from datetime import datetime

from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.instances import InstanceInfo, InstanceOrchestrator
from obp_workflow.ports.system import Clock

from .faults import Faults


class FakeInstanceOrchestrator(InstanceOrchestrator):
    """One instance per project; ``ensure`` is atomic so concurrent calls start one."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._instances: dict[ProjectRef, InstanceInfo] = {}
        self._lock = threading.Lock()
        self.faults = Faults()
        self.starts = 0

    def ensure(self, project: ProjectRef) -> InstanceInfo:
        self.faults.before("ensure")
        with self._lock:
            current = self._instances.get(project)
            if current is None or not current.live:
                self.starts += 1
                current = InstanceInfo(
                    project, f"task-{self.starts:04d}", "RUNNING", started_at=self._now()
                )
                self._instances[project] = current
        self.faults.after("ensure")
        return current

    def describe(self, project: ProjectRef) -> InstanceInfo | None:
        with self._lock:
            return self._instances.get(project)

    def stop(self, project: ProjectRef, reason: str) -> None:
        with self._lock:
            current = self._instances.get(project)
            if current is not None and current.live:
                self._instances[project] = InstanceInfo(
                    project, current.instance_id, "STOPPED", current.started_at, reason
                )

    def _now(self) -> datetime:
        return self._clock.now()
