"""Each run as a Luigi pipeline: Provision -> AwaitCluster -> Submit -> AwaitJob -> Sync ->
AwaitSync -> Register, and FinishCancel for a cancelled run.

Every task's ``complete()`` reads the run's persisted state; every ``run()`` calls exactly one
use case (``Pipeline.advance``), which is safe to repeat. The waits are external tasks: no
Luigi worker is held while a cluster is provisioned, a job runs or a sync job runs. The worker
(``process.py``) builds a run's pipeline again when the monitor, the provisioning poll or a
sweep says the run changed.

A step is complete when the run is past the states that step moves, when it has ended, or
when it is being cancelled (FinishCancel takes over).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import ClassVar

import luigi

from obp_workflow.application.pipeline import Pipeline
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunState, SimulationRun
from obp_workflow.entrypoints.composition.logs import log_context
from obp_workflow.ports.runs import RunRepository

S = RunState
#: The lifecycle in order, for "past this state".
_ORDER = {
    S.ACCEPTED: 0,
    S.PROVISIONING: 1,
    S.SUBMITTING: 2,
    S.QUEUED: 3,
    S.RUNNING: 4,
    S.SYNCING: 5,
    S.REGISTERING: 6,
    S.DONE: 7,
}


@dataclass(frozen=True)
class Runtime:
    """What the tasks of this process work with (a Luigi task is built from its parameters
    alone, so the worker installs its runtime here once)."""

    pipeline: Pipeline
    run_repository: RunRepository


_runtime: list[Runtime] = []
_lock = threading.Lock()


def install(runtime: Runtime) -> None:
    with _lock:
        _runtime[:] = [runtime]


def runtime() -> Runtime:
    if not _runtime:
        raise RuntimeError("the worker installs its runtime before any build")
    return _runtime[0]


class OfRun(luigi.Task):
    """The parameters that name a run, and its persisted state."""

    virtual_lab_id = luigi.Parameter()
    project_id = luigi.Parameter()
    run_id = luigi.Parameter()

    @property
    def project(self) -> ProjectRef:
        return ProjectRef(self.virtual_lab_id, self.project_id)

    def ids(self) -> dict[str, str]:
        return {
            "virtual_lab_id": self.virtual_lab_id,
            "project_id": self.project_id,
            "run_id": self.run_id,
        }

    def current(self) -> SimulationRun:
        return runtime().run_repository.get(self.project, self.run_id)


class Step(OfRun):
    """One step of one run: ``run()`` is one ``advance``; past ``UP_TO`` it is complete."""

    UP_TO: ClassVar[RunState] = S.ACCEPTED

    def complete(self) -> bool:
        return _past(self.current(), self.UP_TO)

    def run(self) -> None:
        with log_context(step=type(self).__name__):
            runtime().pipeline.advance(self.project, self.run_id)


class Wait(OfRun):
    """A wait on the outside world (the provisioner, the scheduler): moved on by the worker's
    polls and the monitor, never by a Luigi worker (an external task: no ``run``)."""

    run = None  # type: ignore[assignment]  # luigi's mark of an external task

    UNTIL_PAST: ClassVar[RunState] = S.ACCEPTED

    def complete(self) -> bool:
        return _past(self.current(), self.UNTIL_PAST)


class Provision(Step):
    """Ask the provisioner for the project's cluster."""

    UP_TO = S.ACCEPTED


class AwaitCluster(Wait):
    """The cluster is being created."""

    UNTIL_PAST = S.PROVISIONING


class Submit(Step):
    """Submit the job (exactly once: intent saved, job tagged, looked up by tag on retry)."""

    UP_TO = S.SUBMITTING

    def requires(self) -> list[luigi.Task]:
        return [Provision(**self.ids()), AwaitCluster(**self.ids())]


class AwaitJob(Wait):
    """The job is on the scheduler."""

    UNTIL_PAST = S.RUNNING


class Sync(Step):
    """Plan the outputs' way out and start it (the elevated HSM job, or the direct upload);
    confirm them once the sync job is done."""

    UP_TO = S.SYNCING

    def requires(self) -> list[luigi.Task]:
        return [Submit(**self.ids()), AwaitJob(**self.ids())]

    def complete(self) -> bool:
        run = self.current()
        # An elevated sync job on the scheduler: nothing to do until the monitor reports it.
        return _past(run, S.SYNCING) or (run.state is S.SYNCING and run.watch() is not None)


class AwaitSync(Wait):
    """The outputs are confirmed at their destination."""

    UNTIL_PAST = S.SYNCING


class Register(Step):
    """Register the outputs with their provenance in the knowledge graph."""

    UP_TO = S.REGISTERING

    def requires(self) -> list[luigi.Task]:
        return [Sync(**self.ids()), AwaitSync(**self.ids())]


class FinishCancel(Step):
    """Undo what the run started (its job, its sync job, its registration); confirm the
    cancel."""

    def complete(self) -> bool:
        return self.current().state is not S.CANCELLING


class RunPipeline(OfRun):
    """The whole pipeline of one run: complete when the run has ended."""

    @classmethod
    def of(cls, project: ProjectRef, run_id: str) -> RunPipeline:
        return cls(
            virtual_lab_id=project.virtual_lab_id, project_id=project.project_id, run_id=run_id
        )

    def requires(self) -> luigi.Task:
        if self.current().state is S.CANCELLING:
            return FinishCancel(**self.ids())
        return Register(**self.ids())

    def complete(self) -> bool:
        return self.current().terminal


def _past(run: SimulationRun, state: RunState) -> bool:
    if run.terminal or run.state is S.CANCELLING:
        return True
    return _ORDER[run.state] > _ORDER[state]
