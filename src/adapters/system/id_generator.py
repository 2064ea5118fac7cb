"""Random run ids (UUID 4)."""

from __future__ import annotations

import uuid

from obp_workflow.ports.system import IdGenerator


class UuidIdGenerator(IdGenerator):
    def new_run_id(self) -> str:
        return str(uuid.uuid4())
