"""The use cases of the Workflow Service, over ports only.

Requests (``submit``, ``get``, ``list_runs``, ``cancel``, ``log``, ``instance``) check the
caller's rights against the project in their path. The pipeline (``advance`` one run by one
step, ``monitor_cycle`` over every watched job) is safe to repeat after a crash at any point:
each step reads the run from the repository, and every side effect on the cluster is either
idempotent or preceded by a persisted intent that lets a later step find it again.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from obp_workflow.core.cluster import ClusterHandle, KeyRole, ProvisioningPhase
from obp_workflow.core.errors import (
    ClusterUnreachable,
    Conflict,
    CorruptRecord,
    DomainError,
    FieldError,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    SubmissionRejected,
    SubmissionUnclear,
    SyncIncomplete,
)
from obp_workflow.core.identity import Action, Principal, ProjectRef, authorize
from obp_workflow.core.jobs import JobAccounting, JobObservation, JobPhase
from obp_workflow.core.jobspec import build_job_spec
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import (
    JobWatch,
    Requester,
    RunHeader,
    RunState,
    SimulationRun,
)
from obp_workflow.core.sync import (
    LustreHsmExport,
    SyncLimits,
    SyncPlan,
    SyncRefused,
    choose_sync,
)
from obp_workflow.ports.cluster import ClusterGateway, ClusterProvisioner
from obp_workflow.ports.instances import InstanceInfo, InstanceOrchestrator
from obp_workflow.ports.knowledge_graph import KnowledgeGraph, RunProvenance
from obp_workflow.ports.runs import Page, RunRepository
from obp_workflow.ports.sync import DataSynchronizer, SyncJobSubmitted
from obp_workflow.ports.system import Clock, EventPublisher, IdGenerator

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")


@dataclass(frozen=True)
class ServicePolicy:
    """The knobs of the pipeline; every one has a sane default."""

    provisioning_timeout: timedelta = timedelta(minutes=60)
    #: Submissions whose reply was lost, with no job found by tag, before the run fails.
    #: An unreachable cluster never counts: it makes the run STALE, not FAILED.
    max_submit_attempts: int = 5
    cluster_cache_ttl: timedelta = timedelta(seconds=60)
    sync_limits: SyncLimits = field(default_factory=SyncLimits)
    max_log_bytes: int = 256 * 1024


@dataclass(frozen=True)
class CycleReport:
    """What one monitor cycle did: which clusters it asked and which runs changed."""

    clusters_polled: int
    jobs_polled: int
    changed: tuple[tuple[ProjectRef, str], ...]
    unreachable: tuple[str, ...] = ()


class _Tracked:
    """A run being worked on, and the version the repository holds of it."""

    def __init__(self, run: SimulationRun) -> None:
        self.run = run
        self.saved = run.version

    @property
    def dirty(self) -> bool:
        return self.run.version != self.saved


class WorkflowService:
    def __init__(
        self,
        *,
        runs: RunRepository,
        provisioner: ClusterProvisioner,
        gateway: ClusterGateway,
        synchronizer: DataSynchronizer,
        knowledge_graph: KnowledgeGraph,
        instances: InstanceOrchestrator,
        clock: Clock,
        ids: IdGenerator,
        events: EventPublisher,
        policy: ServicePolicy | None = None,
    ) -> None:
        self.runs = runs
        self.provisioner = provisioner
        self.gateway = gateway
        self.synchronizer = synchronizer
        self.knowledge_graph = knowledge_graph
        self.instances = instances
        self.clock = clock
        self.ids = ids
        self.events = events
        self.policy = policy or ServicePolicy()
        self._clusters: dict[ProjectRef, tuple[ClusterHandle, datetime]] = {}
        self._steps: dict[RunState, Callable[[_Tracked], None]] = {
            RunState.ACCEPTED: self._provision,
            RunState.PROVISIONING: self._await_cluster,
            RunState.SUBMITTING: self._submit,
            RunState.SYNCING: self._sync,
            RunState.REGISTERING: self._register,
            RunState.CANCELLING: self._finish_cancel,
        }

    # ================================================================ requests

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
                run_id=self.ids.new_run_id(),
                project=project,
                requested_by=Requester(principal.subject, principal.username),
                request=request,
                created_at=self.clock.now(),
                idempotency_key=idempotency_key,
            )
            run = SimulationRun.accept(header)
            try:
                self.runs.add(run)
            except IdempotencyConflict:
                # Another request with the same key won the race: answer as a replay.
                replay = self._replay_of(project, idempotency_key, request)
                if replay is None:
                    raise
                run = replay
            else:
                self._publish(run, 0)
        try:
            self.instances.ensure(project)
        except DomainError as exc:
            raise ServiceUnavailable(
                f"run {run.run_id} is recorded, but the project's workflow instance could not "
                f"be started ({exc.message}); retry with the same Idempotency-Key"
            ) from exc
        return run

    def get(self, principal: Principal, project: ProjectRef, run_id: str) -> SimulationRun:
        authorize(principal, project, Action.READ)
        return self.runs.get(project, run_id)

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
        return self.runs.list(project, states, cursor, limit)

    def cancel(
        self, principal: Principal, project: ProjectRef, run_id: str, reason: str = ""
    ) -> SimulationRun:
        """Ask for a run to stop. Idempotent; a finished run cannot be cancelled."""
        authorize(principal, project, Action.READ)
        for _ in range(5):
            run = self.runs.get(project, run_id)
            authorize(principal, project, Action.CANCEL_OWN, owner=run.header.requested_by.subject)
            if run.state in (RunState.CANCELLING, RunState.CANCELLED):
                return run
            if run.terminal:
                raise Conflict(f"run {run_id} is already {run.state.value} and cannot be cancelled")
            tracked = _Tracked(run)
            run.request_cancel(
                self.clock.now(), by=principal.username or principal.subject, reason=reason[:500]
            )
            try:
                self._commit(tracked)
            except Conflict:
                continue  # the pipeline moved the run meanwhile: look again
            return run
        raise ServiceUnavailable(f"run {run_id} is changing too fast to cancel; try again")

    def log(self, principal: Principal, project: ProjectRef, run_id: str, max_bytes: int) -> str:
        """The end of the run's job log, read from the cluster."""
        run = self.get(principal, project, run_id)
        if run.cluster_name is None:
            return ""
        cluster = self._cluster(project)
        size = max(1, min(max_bytes, self.policy.max_log_bytes))
        return self.gateway.tail_log(cluster, cluster.run_folder(run.run_id), size)

    def instance(self, principal: Principal, project: ProjectRef) -> InstanceInfo | None:
        authorize(principal, project, Action.READ_INSTANCE)
        return self.instances.describe(project)

    # ================================================================ the pipeline

    def advance(self, project: ProjectRef, run_id: str) -> bool:
        """Take one step of the run's pipeline. True when the run changed.

        Waiting states (QUEUED, RUNNING) are moved by ``monitor_cycle``, not here.
        """
        run = self.runs.get(project, run_id)
        step = self._steps.get(run.state)
        if step is None:
            return False
        tracked = _Tracked(run)
        before = run.version
        try:
            step(tracked)
        except ClusterUnreachable as exc:
            if not run.terminal:
                run.mark_stale(self.clock.now(), exc.message)
        except (ServiceUnavailable, SubmissionUnclear):
            pass  # transient: the next step tries again (idempotently); nothing was decided
        except Conflict:
            return True  # someone else moved the run: it changed, just not by us
        if tracked.dirty:
            try:
                self._commit(tracked)
            except Conflict:
                return True
        return run.version != before

    def monitor_cycle(self, project: ProjectRef | None = None) -> CycleReport:
        """Ask each cluster once about all of its watched jobs and apply what is new.

        Reads only the light projections of the watched runs; a whole run is read (and
        written) only when the scheduler says something new about its job.
        """
        watched: dict[ProjectRef, list[JobWatch]] = defaultdict(list)
        for watch in self.runs.list_watched(project):
            watched[watch.project].append(watch)
        changed: list[tuple[ProjectRef, str]] = []
        unreachable: list[str] = []
        jobs = 0
        for proj, watches in watched.items():
            try:
                cluster = self._cluster(proj)
                jobs += len(watches)
                answers = self.gateway.poll(cluster, [w.job_id for w in watches])
            except ClusterUnreachable as exc:
                unreachable.append(str(proj))
                stale = partial(_mark_stale, at=self.clock.now(), reason=exc.message)
                for w in watches:
                    if not w.stale and self._update(w, stale):
                        changed.append((proj, w.run_id))
                continue
            except ServiceUnavailable:
                continue
            for w in watches:
                obs = answers.get(w.job_id)
                if obs is None or _nothing_new(w, obs):
                    continue
                if self._update(w, partial(_observe, at=self.clock.now(), obs=obs)):
                    changed.append((proj, w.run_id))
        return CycleReport(len(watched), jobs, tuple(changed), tuple(unreachable))

    def _update(self, watch: JobWatch, change: Callable[[SimulationRun], object]) -> bool:
        """Apply a scheduler answer to the run behind ``watch``, if it still watches that job."""
        try:
            run = self.runs.get(watch.project, watch.run_id)
        except (NotFound, CorruptRecord):
            return False
        current = run.watch()
        if current is None or current.job_id != watch.job_id:
            return False  # the run moved on since the projection was read
        tracked = _Tracked(run)
        change(run)
        return self._save_if_changed(tracked)

    def sweep(self, project: ProjectRef | None = None) -> list[tuple[ProjectRef, str]]:
        """One round: a monitor cycle, then one step for every active run. What changed.

        A run whose record is damaged is left where it is (the repository reports it); the
        others go on."""
        changed = list(self.monitor_cycle(project).changed)
        for run in self.runs.list_active(project):
            try:
                moved = self.advance(run.project, run.run_id)
            except CorruptRecord:
                continue  # damaged since it was listed: never a reason to stop the round
            if moved:
                changed.append((run.project, run.run_id))
        return changed

    # ================================================================ the steps

    def _provision(self, t: _Tracked) -> None:
        status = self.provisioner.request(t.run.project)
        now = self.clock.now()
        if status.phase is ProvisioningPhase.FAILED:
            t.run.fail(now, f"the project's cluster could not be created: {status.detail}")
            return
        t.run.start_provisioning(now)
        if status.cluster is not None:
            self._remember(t.run.project, status.cluster)
            t.run.cluster_ready(now, status.cluster.name)

    def _await_cluster(self, t: _Tracked) -> None:
        project = t.run.project
        status = self.provisioner.describe(project)
        now = self.clock.now()
        if status.cluster is not None:
            self._remember(project, status.cluster)
            t.run.cluster_ready(now, status.cluster.name)
        elif status.phase is ProvisioningPhase.FAILED:
            t.run.fail(now, f"the project's cluster could not be created: {status.detail}")
        elif status.phase is ProvisioningPhase.NOT_FOUND:
            self.provisioner.request(project)  # idempotent: ask again
        elif now - _entered(t.run, RunState.PROVISIONING) > self.policy.provisioning_timeout:
            minutes = int(self.policy.provisioning_timeout.total_seconds() // 60)
            t.run.fail(
                now,
                f"the project's cluster was not ready after {minutes} minutes"
                + (f" (last status: {status.detail})" if status.detail else ""),
            )

    def _submit(self, t: _Tracked) -> None:
        """Exactly once: intent persisted, job tagged, lookup by tag before any retry."""
        run = t.run
        cluster = self._cluster(run.project)
        if run.submit_attempts > 0:
            found = self.gateway.find_by_tag(cluster, run.header.tag)
            if found is not None:
                run.job_submitted(self.clock.now(), found, adopted=True)
                return
        if run.submit_unclear >= self.policy.max_submit_attempts:
            run.fail(
                self.clock.now(),
                f"the cluster did not confirm {run.submit_unclear} submissions of the job",
            )
            return
        spec = build_job_spec(run.header, cluster)
        run.record_submit_attempt(self.clock.now())
        self._commit(t)  # the intent, durable before anything reaches the cluster
        adopted = False
        try:
            job_id: str | None = self.gateway.submit(cluster, spec)
        except SubmissionUnclear:
            job_id = self.gateway.find_by_tag(cluster, run.header.tag)
            if job_id is None:
                run.record_submit_unclear(self.clock.now())
                return  # the next step looks again, then resubmits
            adopted = True
        except SubmissionRejected as exc:
            run.fail(self.clock.now(), f"the cluster refused the job: {exc.message}")
            return
        assert job_id is not None
        run.job_submitted(self.clock.now(), job_id, adopted=adopted)
        try:
            self._commit(t)
        except Conflict:
            self._orphan_check(run.project, run.run_id, cluster, job_id)
            raise

    def _orphan_check(
        self, project: ProjectRef, run_id: str, cluster: ClusterHandle, job_id: str
    ) -> None:
        """A run changed under a submission (cancelled meanwhile): never leave its job behind."""
        current = self.runs.get(project, run_id)
        if current.job_id != job_id and current.state is not RunState.SUBMITTING:
            self.gateway.cancel(cluster, job_id)

    def _sync(self, t: _Tracked) -> None:
        run = t.run
        now = self.clock.now()
        limits = self.policy.sync_limits
        if run.sync_attempts >= limits.max_attempts:
            run.fail(
                now,
                f"outputs could not be synchronised in {run.sync_attempts} attempts: "
                f"{run.sync_problem}",
            )
            return
        if run.sync_job_id is not None and not run.sync_job_done:
            return  # the elevated job is running: the monitor cycle watches it
        cluster = self._cluster(run.project)
        plan = self._plan(run, cluster)
        if isinstance(plan, SyncRefused):
            shown = ", ".join(plan.offending[:20])
            run.fail(now, f"outputs cannot be synchronised: {plan.reason}: {shown}")
            return
        if run.sync_kind is None:
            run.sync_planned(now, plan.kind, len(plan.files))
        try:
            if isinstance(plan, LustreHsmExport) and run.sync_job_done:
                outcome = self.synchronizer.confirm(cluster, run.header, plan)
            else:
                started = self.synchronizer.start(
                    cluster, run.header, plan, attempt=run.sync_attempts + 1
                )
                if isinstance(started, SyncJobSubmitted):
                    run.sync_job_started(self.clock.now(), started.job_id)
                    return
                outcome = self.synchronizer.confirm(cluster, run.header, plan)
        except SyncIncomplete as exc:
            run.sync_attempt_failed(self.clock.now(), exc.message)
            return
        run.sync_confirmed(self.clock.now(), outcome)

    def _plan(self, run: SimulationRun, cluster: ClusterHandle) -> SyncPlan | SyncRefused:
        folder = cluster.run_folder(run.run_id)
        found = {f.path: f.size for f in self.gateway.list_outputs(cluster, folder)}
        return choose_sync(
            cluster.storage, folder, run.header.request.outputs, found, self.policy.sync_limits
        )

    def _register(self, t: _Tracked) -> None:
        run = t.run
        assert run.sync_outcome is not None
        assert run.job_id is not None
        started = _entered(run, RunState.RUNNING, default=_entered(run, RunState.QUEUED))
        provenance = RunProvenance(
            header=run.header,
            cluster_name=run.cluster_name or "",
            job_id=run.job_id,
            started_at=started,
            ended_at=_entered(run, RunState.SYNCING),
            outcome=run.sync_outcome,
            exit_code=run.exit_code,
            accounting=self._accounting(run, run.job_id),
        )
        try:
            registration = self.knowledge_graph.register(provenance)
        except SyncIncomplete as exc:
            # Confirmed outputs that are gone (or changed) by the time they are linked: the
            # evidence is there, and registering again cannot bring them back.
            run.fail(self.clock.now(), f"outputs could not be registered: {exc.message}")
            return
        run.registered(self.clock.now(), registration.activity_id, registration.entity_ids)

    def _accounting(self, run: SimulationRun, job_id: str) -> JobAccounting | None:
        """The job's accounting record for its provenance, or None when the cluster cannot be
        asked: once the outputs are safe, a cluster that is gone (or its provisioner down)
        never holds the registration back. An incomplete record is waited for
        (ServiceUnavailable: the step is tried again)."""
        try:
            cluster = self._cluster(run.project)
        except (ClusterUnreachable, ServiceUnavailable):
            return None
        try:
            return self.gateway.accounting(cluster, job_id, run.header.tag)
        except ClusterUnreachable:
            return None

    def _finish_cancel(self, t: _Tracked) -> None:
        """Undo what the run may have started, then confirm the cancel."""
        run = t.run
        origin = run.cancelled_from()
        if origin is RunState.REGISTERING:
            self.knowledge_graph.withdraw(run.header)
        elif origin is RunState.SYNCING:
            if run.sync_job_id is not None:
                cluster = self._cluster(run.project)
                self.gateway.cancel(cluster, run.sync_job_id, KeyRole.ADMIN)
        else:
            cluster = self._cluster(run.project)
            job = run.job_id
            if job is None and run.submit_attempts > 0:
                job = self.gateway.find_by_tag(cluster, run.header.tag)
            if job is not None:
                self.gateway.cancel(cluster, job)
        run.cancel_confirmed(self.clock.now())

    # ================================================================ plumbing

    def _cluster(self, project: ProjectRef) -> ClusterHandle:
        cached = self._clusters.get(project)
        now = self.clock.now()
        if cached is not None and now - cached[1] < self.policy.cluster_cache_ttl:
            return cached[0]
        status = self.provisioner.describe(project)
        if status.cluster is None:
            raise ClusterUnreachable(
                f"the project's cluster is not available ({status.phase.value}"
                + (f": {status.detail})" if status.detail else ")")
            )
        self._remember(project, status.cluster)
        return status.cluster

    def _remember(self, project: ProjectRef, cluster: ClusterHandle) -> None:
        self._clusters[project] = (cluster, self.clock.now())

    def _replay_of(
        self, project: ProjectRef, key: str | None, request: SimulationRequest
    ) -> SimulationRun | None:
        if key is None:
            return None
        existing = self.runs.find_by_idempotency_key(project, key)
        if existing is None:
            return None
        if existing.header.request.digest() != request.digest():
            raise IdempotencyConflict(
                "this Idempotency-Key was used for a different request in this project"
            )
        return existing

    def _commit(self, t: _Tracked) -> None:
        if not t.dirty:
            return
        self.runs.save(t.run, t.saved)
        published_from = t.saved
        t.saved = t.run.version
        self._publish(t.run, published_from)

    def _save_if_changed(self, t: _Tracked) -> bool:
        """Store a change; a lost race is left to the next cycle."""
        if not t.dirty:
            return False
        try:
            self._commit(t)
        except Conflict:
            return False
        return True

    def _publish(self, run: SimulationRun, since_version: int) -> None:
        for event in run.events[since_version:]:
            self.events.publish(run.project, run.run_id, event)


def _mark_stale(run: SimulationRun, at: datetime, reason: str) -> None:
    run.mark_stale(at, reason)


def _observe(run: SimulationRun, at: datetime, obs: JobObservation) -> None:
    if run.state is RunState.SYNCING:
        run.sync_job_observed(at, obs)
    else:
        run.job_observed(at, obs)


def _nothing_new(watch: JobWatch, obs: JobObservation) -> bool:
    """True when applying ``obs`` could not change the run behind ``watch``."""
    if obs.phase is JobPhase.UNKNOWN:
        return watch.stale  # STALE is recorded once
    return not watch.stale and obs.raw == watch.last_raw


def _entered(run: SimulationRun, state: RunState, default: datetime | None = None) -> datetime:
    """When the run last entered ``state`` (or ``default``, or its creation)."""
    for event in reversed(run.events):
        if event.to_state is state and event.is_transition:
            return event.at
    return default if default is not None else run.header.created_at
