"""Readable, deterministic run ids."""

from __future__ import annotations

import threading

from obp_workflow.ports.system import IdGenerator


class FakeIdGenerator(IdGenerator):
    """Readable, deterministic run ids: ``run-00000001``, ``run-00000002``, ..."""

    def __init__(self, prefix: str = "run") -> None:
        self._prefix = prefix
        self._n = 0
        self._lock = threading.Lock()

    def new_run_id(self) -> str:
        with self._lock:
            self._n += 1
            return f"{self._prefix}-{self._n:08d}"
