"""The batched monitor: one scheduler question per cluster per cycle, for all watched jobs.

It reads only the light projections of the watched runs (``RunRepository.list_watched``); a
whole run is read, and written, only when the scheduler says something new about its job.
A cluster that does not answer makes its runs STALE (recorded once), never FAILED.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from obp_workflow.core.errors import ClusterUnreachable, CorruptRecord, NotFound, ServiceUnavailable
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.jobs import JobObservation, JobPhase
from obp_workflow.core.run import JobWatch, RunState, SimulationRun
from obp_workflow.ports.cluster import ClusterGateway
from obp_workflow.ports.runs import RunRepository
from obp_workflow.ports.system import Clock

from .clusters import ClusterDirectory
from .recorder import RunRecorder, Tracked


@dataclass(frozen=True)
class CycleReport:
    """What one monitor cycle did: which clusters it asked and which runs changed."""

    clusters_polled: int
    jobs_polled: int
    changed: tuple[tuple[ProjectRef, str], ...]
    unreachable: tuple[str, ...] = ()


class JobMonitor:
    def __init__(
        self,
        *,
        run_repository: RunRepository,
        cluster_gateway: ClusterGateway,
        clusters: ClusterDirectory,
        recorder: RunRecorder,
        clock: Clock,
    ) -> None:
        self.run_repository = run_repository
        self.cluster_gateway = cluster_gateway
        self.clusters = clusters
        self.recorder = recorder
        self.clock = clock

    def cycle(self, project: ProjectRef | None = None) -> CycleReport:
        """Ask each cluster once about all of its watched jobs and apply what is new."""
        watched: dict[ProjectRef, list[JobWatch]] = defaultdict(list)
        for watch in self.run_repository.list_watched(project):
            watched[watch.project].append(watch)
        changed: list[tuple[ProjectRef, str]] = []
        unreachable: list[str] = []
        jobs = 0
        for proj, watches in watched.items():
            try:
                cluster = self.clusters.cluster_of(proj)
                jobs += len(watches)
                answers = self.cluster_gateway.poll(cluster, [w.job_id for w in watches])
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
            run = self.run_repository.get(watch.project, watch.run_id)
        except (NotFound, CorruptRecord):
            return False
        current = run.watch()
        if current is None or current.job_id != watch.job_id:
            return False  # the run moved on since the projection was read
        tracked = Tracked(run)
        change(run)
        return self.recorder.save_if_changed(tracked)


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
