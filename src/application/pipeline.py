"""What drives runs: one step of a run's pipeline (``advance``), the batched monitor
(``monitor_cycle``), and a round over every unfinished run (``sweep``).

Every step is safe to repeat after a crash at any point: it reads the run from the repository,
and every side effect on the cluster is either idempotent or preceded by a persisted intent
that lets a later step find it again (exactly-once submission: the intent is saved before
``sbatch``, the job is tagged with its run, and an unclear outcome is resolved by looking the job
up by its tag before any retry).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from obp_workflow.core.cluster import (
    ClusterHandle,
    KeyRole,
    ProvisioningPhase,
    ProvisioningStatus,
)
from obp_workflow.core.errors import (
    ClusterUnreachable,
    Conflict,
    CorruptRecord,
    ServiceUnavailable,
    SubmissionRejected,
    SubmissionUnclear,
    SyncIncomplete,
)
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.jobs import JobAccounting
from obp_workflow.core.jobspec import build_job_spec
from obp_workflow.core.run import RunBrief, RunState, SimulationRun
from obp_workflow.core.sync import LustreHsmExport, SyncPlan, SyncRefused, choose_sync
from obp_workflow.ports.cluster import ClusterGateway, ClusterProvisioner
from obp_workflow.ports.knowledge_graph import KnowledgeGraph, RunProvenance
from obp_workflow.ports.runs import RunRepository
from obp_workflow.ports.sync import DataSynchronizer, SyncJobSubmitted
from obp_workflow.ports.system import Clock

from .clusters import ClusterDirectory
from .monitor import CycleReport, JobMonitor
from .policy import ServicePolicy
from .recorder import RunRecorder, Tracked


class Pipeline:
    def __init__(
        self,
        *,
        run_repository: RunRepository,
        cluster_provisioner: ClusterProvisioner,
        cluster_gateway: ClusterGateway,
        data_synchronizer: DataSynchronizer,
        knowledge_graph: KnowledgeGraph,
        clusters: ClusterDirectory,
        recorder: RunRecorder,
        clock: Clock,
        policy: ServicePolicy,
    ) -> None:
        self.run_repository = run_repository
        self.cluster_provisioner = cluster_provisioner
        self.cluster_gateway = cluster_gateway
        self.data_synchronizer = data_synchronizer
        self.knowledge_graph = knowledge_graph
        self.clusters = clusters
        self.recorder = recorder
        self.clock = clock
        self.policy = policy
        self.monitor = JobMonitor(
            run_repository=run_repository,
            cluster_gateway=cluster_gateway,
            clusters=clusters,
            recorder=recorder,
            clock=clock,
        )
        self._steps: dict[RunState, Callable[[Tracked], None]] = {
            RunState.ACCEPTED: self._provision,
            RunState.PROVISIONING: self._await_cluster,
            RunState.SUBMITTING: self._submit,
            RunState.SYNCING: self._sync,
            RunState.REGISTERING: self._register,
            RunState.CANCELLING: self._finish_cancel,
        }

    def advance(self, project: ProjectRef, run_id: str) -> bool:
        """Take one step of the run's pipeline. True when the run changed.

        Waiting states (QUEUED, RUNNING) are moved by ``monitor_cycle``, not here.
        """
        run = self.run_repository.get(project, run_id)
        step = self._steps.get(run.state)
        if step is None:
            return False
        tracked = Tracked(run)
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
                self.recorder.commit(tracked)
            except Conflict:
                return True
        return run.version != before

    def monitor_cycle(self, project: ProjectRef | None = None) -> CycleReport:
        """Ask each cluster once about all of its watched jobs and apply what is new."""
        return self.monitor.cycle(project)

    def unfinished(self, project: ProjectRef | None = None) -> list[RunBrief]:
        """Every unfinished run (of one project, or of all), light: no run is read whole."""
        return list(self.run_repository.list_active(project))

    def sweep(self, project: ProjectRef | None = None) -> list[tuple[ProjectRef, str]]:
        """One round: a monitor cycle, then one step for every run a step can move. What
        changed. Runs waiting on a job are left to the monitor and are not read whole.

        A run whose record is damaged is left where it is (the repository reports it); the
        others go on."""
        changed = list(self.monitor_cycle(project).changed)
        for brief in self.unfinished(project):
            if not brief.movable:
                continue
            try:
                moved = self.advance(brief.project, brief.run_id)
            except CorruptRecord:
                continue  # damaged since it was listed: never a reason to stop the round
            if moved:
                changed.append((brief.project, brief.run_id))
        return changed

    # ================================================================ the steps

    def _provision(self, t: Tracked) -> None:
        status = self.cluster_provisioner.request(t.run.project)
        now = self.clock.now()
        if status.phase is ProvisioningPhase.FAILED:
            t.run.fail(now, f"the project's cluster could not be created: {status.detail}")
            return
        t.run.start_provisioning(now)
        if status.cluster is not None:
            self.clusters.remember(t.run.project, status.cluster)
            t.run.cluster_ready(now, status.cluster.name)
        else:
            t.run.provisioning_observed(now, _status_text(status))

    def _await_cluster(self, t: Tracked) -> None:
        project = t.run.project
        status = self.cluster_provisioner.describe(project)
        now = self.clock.now()
        if status.cluster is not None:
            self.clusters.remember(project, status.cluster)
            t.run.cluster_ready(now, status.cluster.name)
            return
        if status.phase is ProvisioningPhase.FAILED:
            t.run.fail(now, f"the project's cluster could not be created: {status.detail}")
            return
        t.run.provisioning_observed(now, _status_text(status))
        if status.phase is ProvisioningPhase.NOT_FOUND:
            self.cluster_provisioner.request(project)  # idempotent: ask again
        elif now - _entered(t.run, RunState.PROVISIONING) > self.policy.provisioning_timeout:
            minutes = int(self.policy.provisioning_timeout.total_seconds() // 60)
            t.run.fail(
                now,
                f"the project's cluster was not ready after {minutes} minutes"
                + (f" (last status: {status.detail})" if status.detail else ""),
            )

    def _submit(self, t: Tracked) -> None:
        """Exactly once: intent persisted, job tagged, lookup by tag before any retry, and an
        attempt in flight elsewhere waited for (its lease) rather than repeated."""
        run = t.run
        cluster = self.clusters.cluster_of(run.project)
        if run.submit_attempts > 0:
            found = self.cluster_gateway.find_by_tag(cluster, run.header.tag)
            if found is not None:
                run.job_submitted(self.clock.now(), found, adopted=True)
                return
            pending = run.submission_pending_since()
            if pending is not None and self.clock.now() - pending < self.policy.submit_lease:
                return  # another process may be submitting it now: its job, or the lease's end
        if run.submit_unclear >= self.policy.max_submit_attempts:
            run.fail(
                self.clock.now(),
                f"the cluster did not confirm {run.submit_unclear} submissions of the job",
            )
            return
        spec = build_job_spec(run.header, cluster)
        run.record_submit_attempt(self.clock.now())
        self.recorder.commit(t)  # the intent, durable before anything reaches the cluster
        adopted = False
        try:
            job_id: str | None = self.cluster_gateway.submit(cluster, spec)
        except ClusterUnreachable as exc:
            run.record_submit_not_sent(self.clock.now(), exc.message)
            raise  # the run goes STALE: nothing was submitted, the next step tries again
        except SubmissionUnclear:
            job_id = self.cluster_gateway.find_by_tag(cluster, run.header.tag)
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
            self.recorder.commit(t)
        except Conflict:
            self._orphan_check(run.project, run.run_id, cluster, job_id)
            raise

    def _orphan_check(
        self, project: ProjectRef, run_id: str, cluster: ClusterHandle, job_id: str
    ) -> None:
        """A run changed under a submission (cancelled meanwhile): never leave its job behind."""
        current = self.run_repository.get(project, run_id)
        if current.job_id != job_id and current.state is not RunState.SUBMITTING:
            self.cluster_gateway.cancel(cluster, job_id)

    def _sync(self, t: Tracked) -> None:
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
        cluster = self.clusters.cluster_of(run.project)
        plan = self._plan(run, cluster)
        if isinstance(plan, SyncRefused):
            shown = ", ".join(plan.offending[:20])
            run.fail(now, f"outputs cannot be synchronised: {plan.reason}: {shown}")
            return
        if run.sync_kind is None:
            run.sync_planned(now, plan.kind, len(plan.files))
        try:
            if isinstance(plan, LustreHsmExport) and run.sync_job_done:
                outcome = self.data_synchronizer.confirm(cluster, run.header, plan)
            else:
                started = self.data_synchronizer.start(
                    cluster, run.header, plan, attempt=run.sync_attempts + 1
                )
                if isinstance(started, SyncJobSubmitted):
                    run.sync_job_started(self.clock.now(), started.job_id)
                    return
                outcome = self.data_synchronizer.confirm(cluster, run.header, plan)
        except SyncIncomplete as exc:
            run.sync_attempt_failed(self.clock.now(), exc.message)
            return
        run.sync_confirmed(self.clock.now(), outcome)

    def _plan(self, run: SimulationRun, cluster: ClusterHandle) -> SyncPlan | SyncRefused:
        folder = cluster.run_folder(run.run_id)
        found = {f.path: f.size for f in self.cluster_gateway.list_outputs(cluster, folder)}
        return choose_sync(
            cluster.storage, folder, run.header.request.outputs, found, self.policy.sync_limits
        )

    def _register(self, t: Tracked) -> None:
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
            # evidence is there, and registering again cannot bring them back. An earlier
            # attempt whose reply was lost may have registered the run already: withdrawn
            # first, so that a failed run leaves nothing live in the graph.
            self.knowledge_graph.withdraw(run.header)
            run.fail(self.clock.now(), f"outputs could not be registered: {exc.message}")
            return
        run.registered(self.clock.now(), registration.activity_id, registration.entity_ids)

    def _accounting(self, run: SimulationRun, job_id: str) -> JobAccounting | None:
        """The job's accounting record for its provenance, or None when the cluster cannot be
        asked: once the outputs are safe, a cluster that is gone (or its provisioner down)
        never holds the registration back. An incomplete record is waited for
        (ServiceUnavailable: the step is tried again)."""
        try:
            cluster = self.clusters.cluster_of(run.project)
        except (ClusterUnreachable, ServiceUnavailable):
            return None
        try:
            return self.cluster_gateway.accounting(cluster, job_id, run.header.tag)
        except ClusterUnreachable:
            return None

    def _finish_cancel(self, t: Tracked) -> None:
        """Undo what the run may have started, then confirm the cancel."""
        run = t.run
        origin = run.cancelled_from()
        if origin is RunState.REGISTERING:
            self.knowledge_graph.withdraw(run.header)
        elif origin is RunState.SYNCING:
            if run.sync_job_id is not None:
                cluster = self.clusters.cluster_of(run.project)
                self.cluster_gateway.cancel(cluster, run.sync_job_id, KeyRole.ADMIN)
        else:
            cluster = self.clusters.cluster_of(run.project)
            job = run.job_id
            if job is None and run.submit_attempts > 0:
                job = self.cluster_gateway.find_by_tag(cluster, run.header.tag)
            if job is not None:
                self.cluster_gateway.cancel(cluster, job)
        run.cancel_confirmed(self.clock.now())


def _status_text(status: ProvisioningStatus) -> str:
    return status.phase.value + (f": {status.detail}" if status.detail else "")


def _entered(run: SimulationRun, state: RunState, default: datetime | None = None) -> datetime:
    """When the run last entered ``state`` (or ``default``, or its creation)."""
    for event in reversed(run.events):
        if event.to_state is state and event.is_transition:
            return event.at
    return default if default is not None else run.header.created_at
