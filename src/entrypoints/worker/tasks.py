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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import luigi
import luigi.task_register

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


_PARAMS: dict[type[luigi.Task], tuple[tuple[str, luigi.Parameter], ...]] = {}


def forget_made_tasks() -> None:
    """Let go of every task made so far: Luigi keeps each task it makes (its instance cache,
    which ``of_this_run`` relies on within a run's builds), so a worker that lives for days
    would keep every run it ever built. The next build of a run makes its tasks again."""
    luigi.task_register.Register.clear_instance_cache()


#: The runs read by the build in this thread, until one of its steps runs.
_read = threading.local()


@contextmanager
def one_read_per_step() -> Iterator[None]:
    """Within a build, every task's ``complete()`` looks at one reading of the run, taken
    again after each step that ran: scheduling a build asks every task of the pipeline at once,
    and each would otherwise read the run (a DynamoDB read each, in production)."""
    _read.runs = {}
    try:
        yield
    finally:
        del _read.runs


class OfRun(luigi.Task):
    """The parameters that name a run, and its persisted state."""

    virtual_lab_id = luigi.Parameter()
    project_id = luigi.Parameter()
    run_id = luigi.Parameter()

    @property
    def project(self) -> ProjectRef:
        return ProjectRef(self.virtual_lab_id, self.project_id)

    @classmethod
    def get_params(cls) -> list[tuple[str, luigi.Parameter]]:
        """Luigi looks a task's parameters up in ``dir(cls)`` on every call, dozens of times
        per build; a run's tasks never gain a parameter once their class is made."""
        params = _PARAMS.get(cls)
        if params is None:
            params = _PARAMS[cls] = tuple(super().get_params())
        return list(params)

    def of_this_run(self, *kinds: type[OfRun]) -> list[luigi.Task]:
        """The tasks ``kinds`` of this run, made once: Luigi asks for a task's requirements
        several times per build, and making a task (its parameters checked, its instance
        looked up) costs more than the rest of the build."""
        made: dict[tuple[type[OfRun], ...], list[luigi.Task]] = self.__dict__.setdefault(
            "_made", {}
        )
        if kinds not in made:
            made[kinds] = [kind(**self.ids()) for kind in kinds]
        return made[kinds]

    def ids(self) -> dict[str, str]:
        return {
            "virtual_lab_id": self.virtual_lab_id,
            "project_id": self.project_id,
            "run_id": self.run_id,
        }

    def current(self) -> SimulationRun:
        runs: dict[tuple[ProjectRef, str], SimulationRun] | None = getattr(_read, "runs", None)
        if runs is None:
            return runtime().run_repository.get(self.project, self.run_id)
        key = (self.project, self.run_id)
        if key not in runs:
            runs[key] = runtime().run_repository.get(self.project, self.run_id)
        return runs[key]

    def forget(self) -> None:
        """The run changed (a step ran): the next ``complete()`` reads it again."""
        runs = getattr(_read, "runs", None)
        if runs is not None:
            runs.pop((self.project, self.run_id), None)


class Step(OfRun):
    """One step of one run: ``run()`` is one ``advance``; past ``UP_TO`` it is complete."""

    UP_TO: ClassVar[RunState] = S.ACCEPTED

    def complete(self) -> bool:
        return _past(self.current(), self.UP_TO)

    def run(self) -> None:
        with log_context(step=type(self).__name__):
            try:
                runtime().pipeline.advance(self.project, self.run_id)
            finally:
                self.forget()


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
        return self.of_this_run(Provision, AwaitCluster)


class AwaitJob(Wait):
    """The job is on the scheduler."""

    UNTIL_PAST = S.RUNNING


class Sync(Step):
    """Plan the outputs' way out and start it (the elevated HSM job, or the direct upload);
    confirm them once the sync job is done."""

    UP_TO = S.SYNCING

    def requires(self) -> list[luigi.Task]:
        return self.of_this_run(Submit, AwaitJob)

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
        return self.of_this_run(Sync, AwaitSync)


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
            return self.of_this_run(FinishCancel)[0]
        return self.of_this_run(Register)[0]

    def complete(self) -> bool:
        return self.current().terminal


def _past(run: SimulationRun, state: RunState) -> bool:
    if run.terminal or run.state is S.CANCELLING:
        return True
    return _ORDER[run.state] > _ORDER[state]
