from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime

from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunEvent
from obp_workflow.ports.system import Clock, EventPublisher, IdGenerator

log = logging.getLogger("obp_workflow.events")


class SystemClock(Clock):
    def now(self) -> datetime:
        return datetime.now(UTC)


class UuidIds(IdGenerator):
    def new_run_id(self) -> str:
        return str(uuid.uuid4())


class LogPublisher(EventPublisher):
    """Every recorded change as one structured log line (no secret is ever in an event)."""

    def publish(self, project: ProjectRef, run_id: str, event: RunEvent) -> None:
        try:
            log.info(
                json.dumps(
                    {
                        "project": project.key,
                        "run": run_id,
                        "version": event.version,
                        "at": event.at.isoformat(),
                        "kind": event.kind,
                        "state": event.to_state.value,
                        "reason": event.reason,
                    }
                )
            )
        except Exception:
            log.exception("could not publish an event of run %s", run_id)
