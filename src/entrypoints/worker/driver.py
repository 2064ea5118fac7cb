"""The pipeline driver: rounds of the pipeline until there is nothing left to do.

One round is a monitor cycle (one scheduler question per cluster) and one step of every run a
step can move (``Pipeline.sweep``). The driver repeats rounds every ``interval`` seconds until
its condition holds or it is told to stop; a round that raises is logged and the next one goes
on, since every step is safe to repeat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from obp_workflow.application.pipeline import Pipeline
from obp_workflow.core.identity import ProjectRef

log = logging.getLogger("obp_workflow.worker")


class Driver:
    def __init__(
        self,
        pipeline: Pipeline,
        project: ProjectRef | None = None,
        *,
        interval: float = 1.0,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.pipeline = pipeline
        self.project = project
        self.interval = interval
        self.sleep = sleep
        self.stopping = threading.Event()
        self.rounds = 0

    def round(self) -> list[tuple[ProjectRef, str]]:
        """One round; the runs that changed."""
        self.rounds += 1
        return self.pipeline.sweep(self.project)

    def run(self, until: Callable[[], bool], max_rounds: int | None = None) -> bool:
        """Rounds until ``until()`` holds (True), or ``max_rounds`` or a stop (False)."""
        done = 0
        while not self.stopping.is_set():
            if until():
                return True
            if max_rounds is not None and done >= max_rounds:
                return False
            try:
                changed = self.round()
            except Exception:
                log.exception("a round of the pipeline failed; the next one goes on")
                changed = []
            done += 1
            if not changed and self.interval > 0:
                self.sleep(self.interval)
        return False

    def stop(self) -> None:
        self.stopping.set()
