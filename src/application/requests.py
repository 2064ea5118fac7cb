"""What the API asks of the service: submit, get, list, cancel, log, provenance, instance.

Every request checks the caller's rights against the project in its path (the access table of
``core/identity.py``). Nothing here touches a cluster except ``log``, nor the knowledge graph
except ``provenance``; each builds its outside access on its first request: the API that only
records runs and starts instances never loads the cluster or the knowledge graph adapter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection

from obp_workflow.core.errors import (
    Conflict,
    DomainError,
    FieldError,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
)
from obp_workflow.core.identity import Action, Principal, ProjectRef, authorize
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import Requester, RunHeader, RunState, SimulationRun
from obp_workflow.ports.cluster import ClusterGateway
from obp_workflow.ports.instances import InstanceInfo, InstanceOrchestrator
from obp_workflow.ports.knowledge_graph import KnowledgeGraph, RecordedProvenance
from obp_workflow.ports.runs import Page, RunRepository
from obp_workflow.ports.system import Clock, IdGenerator

from .clusters import ClusterDirectory
from .recorder import RunRecorder, Tracked

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
#: Cancels retried when the pipeline moves the run between the read and the save.
_CANCEL_ATTEMPTS = 5


class RunLogs:
    """The end of a run's job log, read from its cluster."""

    def __init__(
        self, clusters: ClusterDirectory, cluster_gateway: ClusterGateway, max_log_bytes: int
    ) -> None:
        self.clusters = clusters
        self.cluster_gateway = cluster_gateway
        self.max_log_bytes = max_log_bytes

    def tail(self, run: SimulationRun, max_bytes: int) -> str:
        if run.cluster_name is None:
            return ""
        cluster = self.clusters.cluster_of(run.project)
        size = max(1, min(max_bytes, self.max_log_bytes))
        return self.cluster_gateway.tail_log(cluster, cluster.run_folder(run.run_id), size)


class RunProvenanceReader:
    """What the knowledge graph holds of a run: its activity and entities, as registered."""

    def __init__(self, knowledge_graph: KnowledgeGraph) -> None:
        self.knowledge_graph = knowledge_graph

    def read(self, run: SimulationRun) -> RecordedProvenance:
        found = self.knowledge_graph.read(run.header)
        if found is None:
            raise NotFound(f"run {run.run_id} has nothing registered in the knowledge graph")
        return found


class Requests:
    def __init__(
        self,
        *,
        run_repository: RunRepository,
        instance_orchestrator: InstanceOrchestrator,
        recorder: RunRecorder,
        clock: Clock,
        id_generator: IdGenerator,
        run_logs: Callable[[], RunLogs],
        run_provenance: Callable[[], RunProvenanceReader],
    ) -> None:
        self.run_repository = run_repository
        self.instance_orchestrator = instance_orchestrator
        self.recorder = recorder
        self.clock = clock
        self.id_generator = id_generator
        self._run_logs = run_logs
        self._run_provenance = run_provenance

    def submit(
        self,
        principal: Principal,
        project: ProjectRef,
        request: SimulationRequest,
        idempotency_key: str | None = None,
    ) -> SimulationRun:
        """Record a new run (or return the one this idempotency key made) and make sure the
        project's workflow instance is up to drive it."""
        authorize(principal, project, Action.SUBMIT)
        if idempotency_key is not None and not _IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise InvalidRequest(
                [FieldError("Idempotency-Key", "must be 1 to 128 printable ASCII characters")]
            )
        run = self._replay_of(project, idempotency_key, request)
        if run is None:
            header = RunHeader(
                run_id=self.id_generator.new_run_id(),
                project=project,
                requested_by=Requester(principal.subject, principal.username),
                request=request,
                created_at=self.clock.now(),
                idempotency_key=idempotency_key,
            )
            run = SimulationRun.accept(header)
            try:
                self.recorder.add(run)
            except IdempotencyConflict:
                # Another request with the same key won the race: answer as a replay.
                replay = self._replay_of(project, idempotency_key, request)
                if replay is None:
                    raise
                run = replay
        try:
            self.instance_orchestrator.ensure(project)
        except DomainError as exc:
            raise ServiceUnavailable(
                f"run {run.run_id} is recorded, but the project's workflow instance could not "
                f"be started ({exc.message}); retry with the same Idempotency-Key"
            ) from exc
        return run

    def get(self, principal: Principal, project: ProjectRef, run_id: str) -> SimulationRun:
        authorize(principal, project, Action.READ)
        return self.run_repository.get(project, run_id)

    def list_runs(
        self,
        principal: Principal,
        project: ProjectRef,
        states: Collection[RunState] | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        authorize(principal, project, Action.LIST)
        if not 1 <= limit <= 500:
            raise InvalidRequest([FieldError("limit", "must be between 1 and 500")])
        return self.run_repository.list(project, states, cursor, limit)

    def cancel(
        self, principal: Principal, project: ProjectRef, run_id: str, reason: str = ""
    ) -> SimulationRun:
        """Ask for a run to stop. Idempotent; a finished run cannot be cancelled."""
        authorize(principal, project, Action.READ)
        for _ in range(_CANCEL_ATTEMPTS):
            run = self.run_repository.get(project, run_id)
            authorize(principal, project, Action.CANCEL_OWN, owner=run.header.requested_by.subject)
            if run.state in (RunState.CANCELLING, RunState.CANCELLED):
                return run
            if run.terminal:
                raise Conflict(f"run {run_id} is already {run.state.value} and cannot be cancelled")
            tracked = Tracked(run)
            run.request_cancel(
                self.clock.now(), by=principal.username or principal.subject, reason=reason[:500]
            )
            try:
                self.recorder.commit(tracked)
            except Conflict:
                continue  # the pipeline moved the run meanwhile: look again
            return run
        raise ServiceUnavailable(f"run {run_id} is changing too fast to cancel; try again")

    def log(self, principal: Principal, project: ProjectRef, run_id: str, max_bytes: int) -> str:
        """The end of the run's job log, read from the cluster."""
        run = self.get(principal, project, run_id)
        return self._run_logs().tail(run, max_bytes)

    def provenance(
        self, principal: Principal, project: ProjectRef, run_id: str
    ) -> RecordedProvenance:
        """What the knowledge graph holds of the run (withdrawn included); NotFound when
        nothing was registered."""
        run = self.get(principal, project, run_id)
        return self._run_provenance().read(run)

    def instance(self, principal: Principal, project: ProjectRef) -> InstanceInfo | None:
        authorize(principal, project, Action.READ_INSTANCE)
        return self.instance_orchestrator.describe(project)

    def _replay_of(
        self, project: ProjectRef, key: str | None, request: SimulationRequest
    ) -> SimulationRun | None:
        if key is None:
            return None
        existing = self.run_repository.find_by_idempotency_key(project, key)
        if existing is None:
            return None
        if existing.header.request.digest() != request.digest():
            raise IdempotencyConflict(
                "this Idempotency-Key was used for a different request in this project"
            )
        return existing
