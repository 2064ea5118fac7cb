"""Short Luigi builds on events: one build in flight per run, on a small thread pool.

A run asked for while its build is in flight is built once more when that build ends, so an
event that lands during a build is never lost, and two builds of one run never overlap (Luigi
would run a step twice, or report builds as not run).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from obp_workflow.core.identity import ProjectRef

log = logging.getLogger("obp_workflow.worker")


class Dispatcher:
    def __init__(self, build: Callable[[ProjectRef, str], None], threads: int) -> None:
        self._build = build
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="build")
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._again: set[str] = set()
        self.builds = 0

    def dispatch(self, project: ProjectRef, run_id: str) -> None:
        with self._lock:
            if run_id in self._in_flight:
                self._again.add(run_id)
                return
            self._in_flight.add(run_id)
        self._pool.submit(self._work, project, run_id)

    def in_flight(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._in_flight

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def shutdown(self) -> None:
        """Finish the builds in hand and those they asked for; start no other."""
        self._pool.shutdown(wait=True)

    def _work(self, project: ProjectRef, run_id: str) -> None:
        while True:
            try:
                self._build(project, run_id)
            except Exception:
                log.exception(
                    "a build of run %s failed; a later event or sweep tries again", run_id
                )
            with self._lock:
                self.builds += 1
                if run_id in self._again:
                    self._again.discard(run_id)
                    continue
                self._in_flight.discard(run_id)
                return
