"""Luigi builds of the runs' pipelines, each in the calling thread, against the worker's luigid.

A build gives a run's ``RunPipeline`` to a Luigi worker (``luigi.worker.Worker``, one process:
the steps run in the calling thread) and runs it until nothing more can be done: what
``luigi.build`` does, without what a build from a thread, many times a second, does not need.
``luigi.build`` parses the command-line parameters again, sets Luigi's logging up, composes a
summary, and makes a new Luigi worker, whose configuration alone (two dozen parameters, each
looked up in the configuration) cost more than the rest of the build; and every Luigi worker
carries a multiprocessing queue, with its feeder thread, for results that never leave the thread.

So each build thread keeps one Luigi worker for ``BUILDS_PER_WORKER`` builds, cleared between
two builds of what Luigi keeps of one build (``_BuildWorker.build``), then makes a new one: the
scheduler remembers every task a worker ever added until that worker goes away. That clearing
relies on Luigi's worker's internals, hence the exact pin of luigi in pyproject.toml.
"""

from __future__ import annotations

import logging
import queue
import threading

import luigi
import luigi.worker

from obp_workflow.core.identity import ProjectRef

from . import tasks
from .luigid import SerializedScheduler

#: Every build's Luigi worker: in a thread, never retrying a wait by itself.
WORKER = {
    "no_install_shutdown_handler": True,  # built from a thread: no signal handler
    # A step that could not move its run leaves the pipeline's goal with a dependency not
    # complete: nothing to raise about, the run's state says what happened.
    "check_unfulfilled_deps": False,
    "keep_alive": False,
    "retry_external_tasks": False,
    "ping_interval": 5.0,
    "send_failure_email": False,
}
#: Builds one Luigi worker makes before a new one takes over (the scheduler keeps a worker's
#: every task until the worker goes).
BUILDS_PER_WORKER = 20


class Builds:
    """The worker's builds: one Luigi worker per build thread at a time."""

    def __init__(self, scheduler: SerializedScheduler) -> None:
        self.scheduler = scheduler
        self._mine = threading.local()
        self._workers: set[_BuildWorker] = set()
        self._lock = threading.Lock()

    def build(self, project: ProjectRef, run_id: str) -> None:
        """Build the run's pipeline once: every step ready runs (each one ``advance``)."""
        worker = self._worker()
        with tasks.one_read_per_step():
            worker.build(tasks.RunPipeline.of(project, run_id))

    def close(self) -> None:
        """Stop every Luigi worker (the builds have ended)."""
        with self._lock:
            workers, self._workers = self._workers, set()
        for worker in workers:
            worker.close()

    def _worker(self) -> _BuildWorker:
        worker: _BuildWorker | None = getattr(self._mine, "worker", None)
        if worker is not None and worker.builds < BUILDS_PER_WORKER:
            return worker
        fresh = _BuildWorker(self.scheduler)
        with self._lock:
            if worker is not None:
                self._workers.discard(worker)
            self._workers.add(fresh)
        if worker is not None:
            worker.close()
        self._mine.worker = fresh
        return fresh


class _ResultQueue(queue.Queue[tuple[object, ...]]):
    """Where the steps' results wait for the build's loop, in the same thread."""

    def close(self) -> None:
        """Nothing to release (Luigi closes its multiprocessing queue)."""


class _BuildWorker(luigi.worker.Worker):
    """A Luigi worker for many builds in one thread; its results stay in the thread."""

    def __init__(self, scheduler: SerializedScheduler) -> None:
        super().__init__(scheduler=scheduler, worker_processes=1, **WORKER)
        self._task_result_queue.close()
        # A queue of the thread, where Luigi has one of processes.
        self._task_result_queue = _ResultQueue()  # type: ignore[assignment]
        self._own_info = list(self._worker_info)
        self.builds = 0
        self.__enter__()  # its keep-alive thread: pings luigid while the worker lives

    def build(self, task: luigi.Task) -> None:
        # What Luigi keeps of one build, cleared: the tasks it scheduled and their summary,
        # its idle clock, and the first task it adds to its description on every run.
        self._scheduled_tasks.clear()
        self._add_task_history.clear()
        self._get_work_response_history.clear()
        self.unfulfilled_counts.clear()
        self._worker_info = list(self._own_info)
        self._first_task = None
        self._idle_since = None
        self.builds += 1
        self.add(task)
        self.run()

    def close(self) -> None:
        self.__exit__(None, None, None)


class _ExpectedLuigiNoise(logging.Filter):
    """What Luigi says of every build of a run that waits: its external tasks are not complete
    yet. The run's state says what happened; these lines say nothing more."""

    EXPECTED = ("does not exist (yet?)",)

    def filter(self, record: logging.LogRecord) -> bool:
        template = str(record.msg)  # not formatted: a task's repr costs more than the check
        return not any(expected in template for expected in self.EXPECTED)


def quiet_expected_noise() -> None:
    noise = _ExpectedLuigiNoise()
    for name in ("luigi-interface", "luigi"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ExpectedLuigiNoise) for f in logger.filters):
            logger.addFilter(noise)
