"""Run events as structured log lines."""

from __future__ import annotations

import json
import logging

from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunEvent
from obp_workflow.ports.system import EventPublisher

log = logging.getLogger("obp_workflow.events")


class LogEventPublisher(EventPublisher):
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
