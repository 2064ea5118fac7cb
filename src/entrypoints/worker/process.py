"""The workflow container's process: one per Virtual Lab project, driving its runs until idle.

At start it starts its luigid, then reconciles: every unfinished run of its project is looked
at again (a job already submitted is found by its tag, never submitted twice). Then, every
``poll`` seconds:

- the batched monitor asks each cluster once about every watched job; the runs that changed
  are built (``dispatcher.py``: short Luigi builds, ``builds.py``, one in flight per run);
- the project's unfinished runs are listed, light (``RunBrief``): a run a step can move that
  was not built in that state yet (a new run, a cancel) is built;
- runs waiting for their cluster are moved by asking the provisioner, every
  ``provisioning_poll`` seconds;
- every ``sweep`` seconds, every run a step can move is built again, which catches whatever a
  build missed (a ``complete()`` that raised stops a Luigi build silently).

SIGTERM (ECS stopping the task) finishes the builds in hand, stops luigid and exits 0. With no
unfinished run for ``idle`` seconds the worker retires: it asks the orchestrator to stop its
own instance first, then looks once more, and if a run arrived meanwhile it starts the next
instance itself. A request recorded after that last look finds no live instance, and its
``ensure`` starts one: no run is left waiting with nobody to drive it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from obp_workflow.application.pipeline import Pipeline
from obp_workflow.core.errors import DomainError
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunBrief, RunState
from obp_workflow.entrypoints.composition.logs import log_context
from obp_workflow.ports.instances import InstanceOrchestrator
from obp_workflow.ports.runs import RunRepository

from . import builds, tasks
from .dispatcher import Dispatcher
from .luigid import Luigid

log = logging.getLogger("obp_workflow.worker")

#: Builds of one run in a row while each moves it on (a step done makes the next one ready).
MAX_BUILDS_IN_A_ROW = 8
#: A step that did not move its run (a transient answer: the accounting record not written
#: yet, an outside service down) is tried again after this, doubling up to the sweep interval.
FIRST_RETRY_SECONDS = 0.5


@dataclass(frozen=True)
class WorkerConfig:
    threads: int = 4
    poll: float = 1.0
    sweep: float = 30.0
    provisioning_poll: float = 10.0
    #: Seconds with no unfinished run before the worker retires (0: never).
    idle: float = 15 * 60
    luigid_port: int = 8082


class Worker:
    def __init__(
        self,
        project: ProjectRef,
        pipeline: Pipeline,
        run_repository: RunRepository,
        instance_orchestrator: InstanceOrchestrator,
        config: WorkerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.project = project
        self.pipeline = pipeline
        self.run_repository = run_repository
        self.instance_orchestrator = instance_orchestrator
        self.config = config
        self.clock = clock
        self.stopping = threading.Event()
        self.luigid = Luigid(config.luigid_port)
        self.builds = builds.Builds(self.luigid.scheduler)
        self.dispatcher = Dispatcher(self._build, config.threads)
        self.retired = False
        self._built: set[tuple[str, RunState]] = set()
        self._last_sweep = 0.0
        self._last_provisioning_poll = 0.0
        self._idle_since: float | None = None
        #: Runs whose last build left them where they were: (state, retries so far, when next).
        self._retries: dict[str, tuple[RunState, int, float]] = {}
        self._retries_lock = threading.Lock()

    # ---------------------------------------------------------------- the process

    def run(self) -> int:
        """Drive the project's runs until stopped or idle; the exit status (0)."""
        with log_context(project=self.project):
            return self._run()

    def _run(self) -> int:
        tasks.install(tasks.Runtime(self.pipeline, self.run_repository))
        builds.quiet_expected_noise()
        self.luigid.start()
        log.info(
            "worker of project %s started; luigid (visualiser) on %s",
            self.project,
            self.luigid.url,
        )
        # After a crash or a redeploy, the first poll builds every unfinished run again from its
        # persisted state (Submit looks its job up by tag before submitting anything).
        try:
            while not self.stopping.is_set():
                started = self.clock()
                self.tick()
                if self._idle_long_enough():
                    self._retire()
                    break
                self.stopping.wait(max(0.0, self.config.poll - (self.clock() - started)))
        finally:
            self.dispatcher.shutdown()
            self.builds.close()
            self.luigid.stop()
            log.info("worker of project %s stopped", self.project)
        return 0

    def stop(self) -> None:
        """Finish the step in hand and exit (SIGTERM)."""
        self.stopping.set()

    # ---------------------------------------------------------------- one poll

    def tick(self) -> None:
        now = self.clock()
        try:
            report = self.pipeline.monitor_cycle(self.project)
        except DomainError as exc:
            log.warning("monitor cycle failed: %s", exc.message)
        else:
            for project, run_id in report.changed:
                self.dispatcher.dispatch(project, run_id)
        try:
            briefs = self.pipeline.unfinished(self.project)
        except DomainError as exc:
            log.warning("could not list the project's runs: %s", exc.message)
            return
        sweep = now - self._last_sweep >= self.config.sweep
        poll_provisioning = now - self._last_provisioning_poll >= self.config.provisioning_poll
        if sweep:
            self._last_sweep = now
            self._built.clear()
            tasks.forget_made_tasks()
        if poll_provisioning:
            self._last_provisioning_poll = now
        for brief in briefs:
            if not brief.movable or self.dispatcher.in_flight(brief.run_id):
                continue
            if brief.state is RunState.PROVISIONING:
                if poll_provisioning:
                    self._await_cluster(brief.run_id)
                continue
            if (brief.run_id, brief.state) not in self._built or self._retry_due(brief, now):
                self._built.add((brief.run_id, brief.state))
                self.dispatcher.dispatch(brief.project, brief.run_id)
        self._forget_retries_but(brief.run_id for brief in briefs)
        if briefs or self.dispatcher.busy:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now

    def _retry_due(self, brief: RunBrief, now: float) -> bool:
        with self._retries_lock:
            retry = self._retries.get(brief.run_id)
        return retry is not None and retry[0] is brief.state and retry[2] <= now

    def _forget_retries_but(self, run_ids: Iterable[str]) -> None:
        """Runs that ended (or left the project) need no retry."""
        keep = set(run_ids)
        with self._retries_lock:
            for run_id in [r for r in self._retries if r not in keep]:
                del self._retries[run_id]

    def _built_without_progress(self, brief: RunBrief, moved: bool) -> None:
        """Remember a run its build could not move, to try it again soon (backing off)."""
        with self._retries_lock:
            if moved or not brief.movable:
                self._retries.pop(brief.run_id, None)
                return
            state, retries, _ = self._retries.get(brief.run_id, (brief.state, 0, 0.0))
            retries = retries + 1 if state is brief.state else 1
            wait = min(self.config.sweep, FIRST_RETRY_SECONDS * 2 ** (retries - 1))
            self._retries[brief.run_id] = (brief.state, retries, self.clock() + wait)

    def _await_cluster(self, run_id: str) -> None:
        """The provisioning wait's poll: ask the provisioner; a run whose cluster is ready is
        built on (its Submit step)."""
        with log_context(project=self.project, run_id=run_id, step="AwaitCluster"):
            try:
                if self.pipeline.advance(self.project, run_id):
                    self.dispatcher.dispatch(self.project, run_id)
            except DomainError as exc:
                log.warning("provisioning poll failed: %s", exc.message)

    # ---------------------------------------------------------------- one build

    def _build(self, project: ProjectRef, run_id: str) -> None:
        """Build the run's pipeline, again while each build moves it on."""
        first = before = self.run_repository.get(project, run_id).brief()
        for _ in range(MAX_BUILDS_IN_A_ROW):
            if not before.movable:
                break
            with log_context(project=project, run_id=run_id, state=before.state.value):
                self.builds.build(project, run_id)
            after = self.run_repository.get(project, run_id).brief()
            if after == before:
                break
            before = after
        self._built_without_progress(before, moved=before != first)

    # ---------------------------------------------------------------- idle

    def _idle_long_enough(self) -> bool:
        if self.config.idle <= 0 or self._idle_since is None:
            return False
        return self.clock() - self._idle_since >= self.config.idle

    def _retire(self) -> None:
        """Stop this instance, then look once more: a run that arrived meanwhile gets a new
        instance (the orchestrator no longer counts this one as live)."""
        log.info("no unfinished run for %.0f s: retiring", self.config.idle)
        try:
            self.instance_orchestrator.stop(self.project, "idle: no unfinished run")
            if self.pipeline.unfinished(self.project):
                log.info("a run arrived while retiring: starting the next instance")
                self.instance_orchestrator.ensure(self.project)
        except DomainError as exc:
            log.warning("retiring: %s", exc.message)
        self.retired = True
