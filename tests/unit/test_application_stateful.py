"""The application over the in-memory adapters, with faults, driven by hypothesis.

Runs are submitted in two projects (one cluster with Lustre, one without) while the pipeline is
stepped, the monitor polls, jobs progress, and faults strike: a crash between a side effect and
its save, a lost sbatch reply, late or repeated job states, an unreachable cluster, a job
forgotten by the scheduler, cancels at any point, a clock that moves. After every step: exactly
one cluster job per run, no run lost, runs never touch each other's jobs, and nothing unreachable
ever becomes FAILED. At the end the faults stop, and every run must reach a terminal state.
"""

from __future__ import annotations

from hypothesis import event, note
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from obp_workflow.adapters.fake.clock import FakeClock
from obp_workflow.adapters.fake.cluster_gateway import FakeClusterGateway
from obp_workflow.adapters.fake.cluster_provisioner import FakeClusterProvisioner, example_cluster
from obp_workflow.adapters.fake.data_synchronizer import FakeDataSynchronizer
from obp_workflow.adapters.fake.event_publisher import FakeEventPublisher
from obp_workflow.adapters.fake.id_generator import FakeIdGenerator
from obp_workflow.adapters.fake.instance_orchestrator import FakeInstanceOrchestrator
from obp_workflow.adapters.fake.knowledge_graph import FakeKnowledgeGraph, entity_id
from obp_workflow.adapters.fake.object_store import FakeObjectStore
from obp_workflow.adapters.fake.run_repository import FakeRunRepository
from obp_workflow.application.policy import ServicePolicy
from obp_workflow.core.cluster import LustreStorage
from obp_workflow.core.errors import (
    ClusterUnreachable,
    Conflict,
    ServiceUnavailable,
    SubmissionUnclear,
)
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.jobs import PHASE_OF, JobPhase, JobState
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState
from obp_workflow.core.sync import SyncLimits
from tests.application import application

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
LUSTRE = ProjectRef.parse(VLAB, "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20")
SHARED = ProjectRef.parse(VLAB, "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
USER = Principal(
    "subject-ada",
    "ada",
    parse_groups(
        [f"/proj/{VLAB}/{LUSTRE.project_id}/member", f"/proj/{VLAB}/{SHARED.project_id}/member"]
    ),
)
REQUEST = SimulationRequest.parse({"command": ["run-sim"], "outputs": ["out/a.h5", "out/b.h5"]})
FAILURE_STATES = [s for s, p in PHASE_OF.items() if p is JobPhase.FAILED]

#: Reasons the application may give for a FAILED run; each needs positive evidence.
EVIDENCED_FAILURES = (
    "the project's cluster could not be created",
    "the cluster did not confirm",
    "the cluster refused the job",
    "outputs cannot be synchronised",
    "outputs could not be synchronised",
    "outputs could not be registered",
)
#: A failure the rules can cause without a fault: simulated time passes faster than the
#: pipeline is advanced, and the provisioner still says "in progress" past the deadline.
TIMED_OUT = "the project's cluster was not ready after"


class Crash(Exception):
    """The process died: whatever was not saved is lost."""


class ApplicationWithFaults(RuleBasedStateMachine):
    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.repo = FakeRunRepository()
        self.cluster = FakeClusterGateway(auto_progress=False)
        self.provisioner = FakeClusterProvisioner(
            ready_after=1,
            cluster_for=lambda p: example_cluster(p, lustre=p == LUSTRE),
        )
        self.bucket = FakeObjectStore()
        self.graph = FakeKnowledgeGraph(self.bucket, example_cluster(LUSTRE).storage.bucket)
        self.service = application(
            run_repository=self.repo,
            cluster_provisioner=self.provisioner,
            cluster_gateway=self.cluster,
            data_synchronizer=FakeDataSynchronizer(self.cluster, self.bucket, self.graph),
            knowledge_graph=self.graph,
            instance_orchestrator=FakeInstanceOrchestrator(self.clock),
            clock=self.clock,
            id_generator=FakeIdGenerator(),
            event_publisher=FakeEventPublisher(),
            policy=ServicePolicy(sync_limits=SyncLimits(max_attempts=3)),
        )
        self.submitted: dict[str, ProjectRef] = {}
        self.cancel_requested: set[str] = set()
        self.doomed: dict[str, JobState] = {}
        self.vanished: set[str] = set()

    # ------------------------------------------------------------ requests

    @rule(target=runs, lustre=st.booleans(), key=st.sampled_from([None, "k1", "k2"]))
    def submit(self, lustre: bool, key: str | None) -> str:
        project = LUSTRE if lustre else SHARED
        run = self.service.requests.submit(USER, project, REQUEST, idempotency_key=key)
        if key is not None and run.run_id in self.submitted:
            event("idempotent replay")
        self.submitted[run.run_id] = project
        return run.run_id

    @rule(outcome=st.sampled_from(FAILURE_STATES), code=st.integers(1, 9))
    def doom_next_run(self, outcome: JobState, code: int) -> None:
        """The next run's job will end badly (set before it is submitted)."""
        run_id = f"run-{len(self.submitted) + 1:08d}"
        self.cluster.script_outcome(f"obp-{run_id}", outcome, code)
        self.doomed[run_id] = outcome

    @rule(run_id=runs)
    def cancel(self, run_id: str) -> None:
        try:
            run = self.service.requests.cancel(USER, self.submitted[run_id], run_id)
        except Conflict:
            event("cancel refused: run already finished")
            return
        except Crash:
            event("crash during a cancel")
            return
        self.cancel_requested.add(run_id)
        event(f"cancel reached {run.state.value}")

    # ------------------------------------------------------------ the pipeline

    @rule(run_id=runs)
    def advance(self, run_id: str) -> None:
        try:
            self.service.pipeline.advance(self.submitted[run_id], run_id)
        except Crash:
            event("crash during a step")

    @rule()
    def monitor(self) -> None:
        try:
            report = self.service.pipeline.monitor_cycle()
        except Crash:
            event("crash during a monitor cycle")
            return
        assert report.clusters_polled <= 2, "one poll per cluster per cycle"

    @rule()
    def sweep(self) -> None:
        """The worker's round: one monitor cycle, then one step of every active run."""
        try:
            self.service.pipeline.sweep()
        except Crash:
            event("crash during a sweep")

    @rule(rounds=st.integers(1, 6))
    def the_worker_runs_a_while(self, rounds: int) -> None:
        """Jobs progress and the worker sweeps, round after round (faults still armed)."""
        for _ in range(rounds):
            self.cluster.step()
            self.clock.advance(20)
            try:
                self.service.pipeline.sweep()
            except Crash:
                event("crash during a sweep")

    @rule(seconds=st.integers(1, 900))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(data=st.data())
    def a_job_moves(self, data: st.DataObject) -> None:
        live = sorted(
            j for j, job in self.cluster.jobs.items() if job.state.value in ("PENDING", "RUNNING")
        )
        if live:
            self.cluster.step(data.draw(st.sampled_from(live)))

    @rule(data=st.data())
    def scheduler_forgets_a_finished_job(self, data: st.DataObject) -> None:
        done = sorted(
            j
            for j, job in self.cluster.jobs.items()
            if job.in_queue and job.state.value not in ("PENDING", "RUNNING")
        )
        if done:
            self.cluster.forget(data.draw(st.sampled_from(done)))
            event("a finished job left the queue")

    # ------------------------------------------------------------ faults

    @rule(
        fault=st.sampled_from(
            [
                "save",
                "submit-lost",
                "submit-unreachable",
                "poll",
                "late",
                "describe",
                "register-lost",
                "find",
            ]
        )
    )
    def inject(self, fault: str) -> None:
        event(f"fault: {fault}")
        if fault == "save":
            self.repo.faults.fail_next("save", Crash("crash before the save"))
        elif fault == "submit-lost":
            self.cluster.faults.lose_reply_next("submit", SubmissionUnclear("reply lost"))
        elif fault == "submit-unreachable":
            self.cluster.faults.fail_next("submit", ClusterUnreachable("connection dropped"))
        elif fault == "poll":
            self.cluster.faults.fail_next("poll", ClusterUnreachable("squeue timed out"))
        elif fault == "late":
            self.cluster.late_answers += 1
        elif fault == "describe":
            self.provisioner.faults.fail_next("describe", ServiceUnavailable("provisioner 500"))
        elif fault == "register-lost":
            self.graph.faults.lose_reply_next("register", ServiceUnavailable("reply lost"))
        elif fault == "find":
            self.cluster.faults.fail_next("find_by_tag", ClusterUnreachable("lookup failed"))

    @rule(data=st.data())
    def an_exported_object_vanishes(self, data: st.DataObject) -> None:
        """Someone deletes a run's exported objects from the Nexus bucket while it syncs or
        after its sync was confirmed (before the sync: the next attempt archives them again;
        after: the registration finds them gone)."""
        exporting = sorted(
            run_id
            for run_id, project in self.submitted.items()
            if project == LUSTRE
            and self.repo.get(project, run_id).state in (RunState.SYNCING, RunState.REGISTERING)
        )
        if not exporting:
            return
        run_id = data.draw(st.sampled_from(exporting))
        prefix = f"{self.cluster_prefix(run_id)}/"
        gone = [k for k in self.bucket.objects if k[1].startswith(prefix)]
        for found in gone:
            self.bucket.objects.pop(found)
        self.vanished.add(run_id)
        state = self.repo.get(LUSTRE, run_id).state.value
        event(f"exported objects vanished in {state}" if gone else "nothing exported yet")

    @staticmethod
    def cluster_prefix(run_id: str) -> str:
        """The key prefix of a Lustre run's exported outputs."""
        cluster = example_cluster(LUSTRE)
        storage = cluster.storage
        assert isinstance(storage, LustreStorage)
        key = storage.s3_key(cluster.run_folder(run_id) + "/x")
        assert key is not None
        return key.removesuffix("/x")

    @rule(down=st.booleans())
    def cluster_reachability(self, down: bool) -> None:
        self.cluster.unreachable = down
        event("cluster unreachable" if down else "cluster reachable")

    # ------------------------------------------------------------ invariants

    @invariant()
    def at_most_one_cluster_job_per_run(self) -> None:
        for run_id in self.submitted:
            jobs = self.cluster.jobs_tagged(f"obp-{run_id}")
            assert len(jobs) <= 1, f"run {run_id} has {len(jobs)} jobs on the cluster"
        sync_tags = [j.tag for j in self.cluster.jobs.values() if "-sync-" in j.tag]
        assert len(sync_tags) == len(set(sync_tags)), "a sync attempt was submitted twice"

    @invariant()
    def no_run_is_lost_and_runs_keep_to_their_own_jobs(self) -> None:
        for run_id, project in self.submitted.items():
            run = self.repo.get(project, run_id)
            event(f"state {run.state.value}" + (" (stale)" if run.stale else ""))
            if run.job_id is not None:
                assert self.cluster.jobs[run.job_id].tag == f"obp-{run_id}"
            if run.sync_job_id is not None:
                assert self.cluster.jobs[run.sync_job_id].tag.startswith(f"obp-{run_id}-sync-")

    @invariant()
    def failure_needs_positive_evidence(self) -> None:
        for run_id, project in self.submitted.items():
            run = self.repo.get(project, run_id)
            if run.state is not RunState.FAILED:
                continue
            reason = run.failure_reason or ""
            job = self.cluster.jobs.get(run.job_id or "")
            by_job = job is not None and job.state in FAILURE_STATES
            assert by_job or reason.startswith((*EVIDENCED_FAILURES, TIMED_OUT)), reason
            assert "unreachable" not in reason.lower(), reason

    @invariant()
    def cancelled_runs_leave_no_live_job(self) -> None:
        for run_id, project in self.submitted.items():
            run = self.repo.get(project, run_id)
            if run.state is RunState.CANCELLED:
                for job in self.cluster.jobs_tagged(f"obp-{run_id}"):
                    assert job.state.value not in ("PENDING", "RUNNING"), run_id

    # ------------------------------------------------------------ the end

    def teardown(self) -> None:
        """Faults stop; every run must then reach a terminal state, each as it should."""
        self.cluster.faults.clear()
        self.repo.faults.clear()
        self.provisioner.faults.clear()
        self.graph.faults.clear()
        self.cluster.unreachable = False
        self.cluster.late_answers = 0
        for _ in range(60):
            if not self.repo.list_active():
                break
            self.cluster.step()
            self.clock.advance(30)
            self.service.pipeline.sweep()
        for run_id, project in self.submitted.items():
            run = self.repo.get(project, run_id)
            note(f"{run_id}: {' -> '.join(s.value for s in run.states())}")
            assert run.terminal, f"run {run_id} is still {run.state.value}"
            event(f"ended {run.state.value}")
            jobs = self.cluster.jobs_tagged(f"obp-{run_id}")
            assert len(jobs) <= 1
            if run.state is RunState.DONE:
                assert len(jobs) == 1
                assert run.kg_activity_id in self.graph.resources
                _rev, activity = self.graph.resources[run.kg_activity_id]
                assert activity["jobId"] == run.job_id
                if activity["accounting"] is None:  # the cluster was unreachable then
                    event("registered without the accounting record")
                else:
                    assert activity["accounting"]["exitCode"] == 0  # the scheduler's record
            if run.state is RunState.DONE and run.sync_kind == "lustre-hsm":
                assert run.sync_outcome is not None
                for file in run.sync_outcome.files:  # linked: a file of the graph
                    assert entity_id(project, run_id, file.relative_path) + "/file" in (
                        self.graph.links
                    )
            if run_id in self.vanished and run.state is RunState.FAILED:
                assert (run.failure_reason or "").startswith("outputs could not be registered")
            elif run.state is RunState.FAILED and (run.failure_reason or "").startswith(TIMED_OUT):
                event("failed: the cluster was not ready in time")
            elif run_id not in self.cancel_requested and run_id not in self.doomed:
                assert run.state is RunState.DONE, (run_id, run.state, run.failure_reason)
            if run.state is RunState.CANCELLED and run_id not in self.cancel_requested:
                raise AssertionError(f"run {run_id} was cancelled without anyone asking")
        # The knowledge graph holds one activity per DONE run, never a duplicate.
        done = [r for r, p in self.submitted.items() if self.repo.get(p, r).state is RunState.DONE]
        activities = [
            i
            for i, (_, body) in self.graph.resources.items()
            if body.get("@type") == "WorkflowExecution" and not body.get("_deprecated")
        ]
        assert len(activities) == len(set(activities)) == len(done)


TestApplicationWithFaults = ApplicationWithFaults.TestCase
