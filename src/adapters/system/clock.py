"""The system's clock, in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

from obp_workflow.ports.system import Clock


class SystemClock(Clock):
    def now(self) -> datetime:
        return datetime.now(UTC)
