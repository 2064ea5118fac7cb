"""The run lifecycle, driven by hypothesis: every command tried at every state.

A small independent model says which commands are legal where and what they lead to. Legal
commands must succeed and do what the model says; illegal ones must raise IllegalTransition and
leave the run exactly as it was. After every step the invariants of a run are checked.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import event, note
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from obp_workflow.core.errors import IllegalTransition
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.jobs import JobObservation, JobPhase, JobState
from obp_workflow.core.records import dumps, loads
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import (
    TERMINAL_STATES,
    TRANSITIONS,
    Requester,
    RunHeader,
    RunState,
    SimulationRun,
)
from obp_workflow.core.sync import SyncedFile, SyncOutcome

S = RunState
PROJECT = ProjectRef.parse(
    "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10", "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20"
)
START = datetime(2026, 3, 1, tzinfo=UTC)

#: Which fields must be set in which states.
NEEDS_JOB = {S.QUEUED, S.RUNNING, S.SYNCING, S.REGISTERING, S.DONE}
NEEDS_CLUSTER = NEEDS_JOB | {S.SUBMITTING}
TARGET_OF_PHASE = {
    JobPhase.WAITING: S.QUEUED,
    JobPhase.RUNNING: S.RUNNING,
    JobPhase.SUCCEEDED: S.SYNCING,
    JobPhase.FAILED: S.FAILED,
    JobPhase.CANCELLED: S.CANCELLED,
}

job_states = st.sampled_from(list(JobState))
reasons = st.text(min_size=1, max_size=30)
steps = st.integers(min_value=-120, max_value=3600)  # the clock may step back


def header() -> RunHeader:
    return RunHeader(
        run_id="run-00000001",
        project=PROJECT,
        requested_by=Requester("subject-1", "ada"),
        request=SimulationRequest.parse({"command": ["true"], "outputs": ["out.h5"]}),
        created_at=START,
    )


class RunLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.run = SimulationRun.accept(header())
        self.now = START
        self.seen_terminal: RunState | None = None

    # ------------------------------------------------------------ helpers

    def tick(self, seconds: int) -> datetime:
        self.now = self.now + timedelta(seconds=seconds)
        return self.now

    def attempt(self, legal: bool, command: str, action: object, expect: RunState | None) -> None:
        """Run ``action``; check it against the model's verdict."""
        before = dumps(self.run)
        state = self.run.state
        event(f"{command} at {state.value}: {'legal' if legal else 'illegal'}")
        try:
            action()  # type: ignore[operator]
        except IllegalTransition:
            assert not legal, f"{command} is legal at {state.value} but was refused"
            assert dumps(self.run) == before, f"refused {command} changed the run"
            return
        assert legal, f"{command} is illegal at {state.value} but was accepted"
        if expect is not None:
            assert self.run.state is expect, f"{command}: {self.run.state} != {expect}"
        event(f"reached {self.run.state.value}")
        note(f"{command}: {state.value} -> {self.run.state.value}")

    @property
    def active(self) -> bool:
        return self.run.state not in TERMINAL_STATES

    # ------------------------------------------------------------ commands

    @rule(dt=steps)
    def start_provisioning(self, dt: int) -> None:
        at = self.tick(dt)
        self.attempt(
            self.run.state is S.ACCEPTED,
            "start_provisioning",
            lambda: self.run.start_provisioning(at),
            S.PROVISIONING,
        )

    @rule(dt=steps)
    def cluster_ready(self, dt: int) -> None:
        at = self.tick(dt)
        self.attempt(
            self.run.state is S.PROVISIONING,
            "cluster_ready",
            lambda: self.run.cluster_ready(at, "pcluster-a"),
            S.SUBMITTING,
        )

    @rule(dt=steps)
    def record_submit_attempt(self, dt: int) -> None:
        at = self.tick(dt)
        n = self.run.submit_attempts
        self.attempt(
            self.run.state is S.SUBMITTING,
            "record_submit_attempt",
            lambda: self.run.record_submit_attempt(at),
            S.SUBMITTING,
        )
        if self.run.state is S.SUBMITTING:
            assert self.run.submit_attempts == n + 1

    @rule(dt=steps, adopted=st.booleans(), job=st.sampled_from(["1001", ""]))
    def job_submitted(self, dt: int, adopted: bool, job: str) -> None:
        at = self.tick(dt)
        self.attempt(
            self.run.state is S.SUBMITTING and job != "",
            "job_submitted",
            lambda: self.run.job_submitted(at, job, adopted=adopted),
            S.QUEUED,
        )

    @rule(dt=steps, state=job_states, code=st.integers(0, 255), right_job=st.booleans())
    def job_observed(self, dt: int, state: JobState, code: int, right_job: bool) -> None:
        at = self.tick(dt)
        job = self.run.job_id if right_job and self.run.job_id else "999"
        obs = JobObservation(job, state, code, 0, f"{job}|{state.value}|{code}:0", "squeue")
        current = self.run.state
        legal = current in (S.QUEUED, S.RUNNING, S.CANCELLING) and job == self.run.job_id
        if current is S.CANCELLING:
            running = obs.phase in (JobPhase.WAITING, JobPhase.RUNNING, JobPhase.UNKNOWN)
            expect = S.CANCELLING if running else S.CANCELLED
        elif obs.phase is JobPhase.UNKNOWN:
            expect = current
        else:
            expect = TARGET_OF_PHASE[obs.phase]
        self.attempt(legal, "job_observed", lambda: self.run.job_observed(at, obs), expect)
        if legal and obs.phase is JobPhase.UNKNOWN:
            assert self.run.stale, "an unknown job state must make the run STALE"
            assert self.run.state is not S.FAILED

    @rule(dt=steps, reason=reasons)
    def mark_stale(self, dt: int, reason: str) -> None:
        at = self.tick(dt)
        self.attempt(
            self.active, "mark_stale", lambda: self.run.mark_stale(at, reason), self.run.state
        )
        if self.active:
            assert self.run.stale

    @rule(dt=steps)
    def clear_stale(self, dt: int) -> None:
        at = self.tick(dt)
        self.attempt(True, "clear_stale", lambda: self.run.clear_stale(at), self.run.state)
        if self.active:
            assert not self.run.stale

    @rule(dt=steps, kind=st.sampled_from(["lustre-hsm", "nexus-upload"]))
    def sync_planned(self, dt: int, kind: str) -> None:
        at = self.tick(dt)
        self.attempt(
            self.run.state is S.SYNCING,
            "sync_planned",
            lambda: self.run.sync_planned(at, kind, 1),
            S.SYNCING,
        )

    @rule(dt=steps)
    def sync_job_started(self, dt: int) -> None:
        at = self.tick(dt)
        self.attempt(
            self.run.state is S.SYNCING and self.run.sync_job_id is None,
            "sync_job_started",
            lambda: self.run.sync_job_started(at, "2001"),
            S.SYNCING,
        )

    @rule(dt=steps, state=job_states, right_job=st.booleans())
    def sync_job_observed(self, dt: int, state: JobState, right_job: bool) -> None:
        at = self.tick(dt)
        job = self.run.sync_job_id if right_job and self.run.sync_job_id else "998"
        obs = JobObservation(job, state, 0, 0, f"{job}|{state.value}", "squeue")
        legal = self.run.state is S.SYNCING and job == self.run.sync_job_id
        attempts = self.run.sync_attempts
        self.attempt(
            legal, "sync_job_observed", lambda: self.run.sync_job_observed(at, obs), S.SYNCING
        )
        if legal and obs.phase in (JobPhase.FAILED, JobPhase.CANCELLED):
            assert self.run.sync_attempts == attempts + 1
            assert self.run.sync_job_id is None

    @rule(dt=steps, problem=reasons)
    def sync_attempt_failed(self, dt: int, problem: str) -> None:
        at = self.tick(dt)
        self.attempt(
            self.run.state is S.SYNCING,
            "sync_attempt_failed",
            lambda: self.run.sync_attempt_failed(at, problem),
            S.SYNCING,
        )

    @rule(dt=steps)
    def sync_confirmed(self, dt: int) -> None:
        at = self.tick(dt)
        outcome = SyncOutcome("lustre-hsm", (SyncedFile("out.h5", 10, "s3://b/k"),))
        self.attempt(
            self.run.state is S.SYNCING,
            "sync_confirmed",
            lambda: self.run.sync_confirmed(at, outcome),
            S.REGISTERING,
        )

    @rule(dt=steps, activity=st.sampled_from(["https://kg/act/1", ""]))
    def registered(self, dt: int, activity: str) -> None:
        at = self.tick(dt)
        self.attempt(
            self.run.state is S.REGISTERING and activity != "",
            "registered",
            lambda: self.run.registered(at, activity, ["https://kg/ent/1"]),
            S.DONE,
        )

    @rule(dt=steps, reason=st.sampled_from(["boom", ""]))
    def fail(self, dt: int, reason: str) -> None:
        at = self.tick(dt)
        self.attempt(
            self.active and reason != "", "fail", lambda: self.run.fail(at, reason), S.FAILED
        )

    @rule(dt=steps, by=st.sampled_from(["ada", ""]))
    def request_cancel(self, dt: int, by: str) -> None:
        at = self.tick(dt)
        run = self.run
        undo = (
            run.state is S.REGISTERING
            or (run.state is S.SYNCING and run.sync_job_id is not None and not run.sync_job_done)
            or (
                run.state in (S.SUBMITTING, S.QUEUED, S.RUNNING)
                and (run.job_id is not None or run.submit_attempts > 0)
            )
        )
        legal = self.active and run.state is not S.CANCELLING and by != ""
        self.attempt(
            legal,
            "request_cancel",
            lambda: self.run.request_cancel(at, by),
            S.CANCELLING if undo else S.CANCELLED,
        )

    @rule(dt=steps)
    def cancel_confirmed(self, dt: int) -> None:
        at = self.tick(dt)
        self.attempt(
            self.run.state is S.CANCELLING,
            "cancel_confirmed",
            lambda: self.run.cancel_confirmed(at),
            S.CANCELLED,
        )

    @initialize(depth=st.integers(min_value=0, max_value=7))
    def start_deep(self, depth: int) -> None:
        """Begin some examples further down the happy path, so every state is explored."""
        for _ in range(depth):
            self.happy_step(30)

    @rule(dt=steps)
    def happy_step(self, dt: int) -> None:
        """The next step of a run that goes well, so that deep states are reached often."""
        at = self.tick(dt)
        run = self.run
        forward = {
            S.ACCEPTED: lambda: run.start_provisioning(at),
            S.PROVISIONING: lambda: run.cluster_ready(at, "pcluster-a"),
            S.SUBMITTING: lambda: run.job_submitted(at, "1001"),
            S.QUEUED: lambda: run.job_observed(
                at, JobObservation(run.job_id or "", JobState.RUNNING, raw="r")
            ),
            S.RUNNING: lambda: run.job_observed(
                at, JobObservation(run.job_id or "", JobState.COMPLETED, 0, 0, raw="c")
            ),
            S.SYNCING: lambda: run.sync_confirmed(
                at, SyncOutcome("nexus-upload", (SyncedFile("out.h5", 1, "kg:f"),))
            ),
            S.REGISTERING: lambda: run.registered(at, "https://kg/act/1", ["https://kg/e/1"]),
            S.CANCELLING: lambda: run.cancel_confirmed(at),
        }.get(run.state)
        if forward is not None:
            self.attempt(True, "happy_step", forward, None)

    # ------------------------------------------------------------ invariants

    @invariant()
    def history_is_a_legal_path_from_accepted(self) -> None:
        events = self.run.events
        assert events[0].to_state is S.ACCEPTED
        assert events[0].from_state is None
        for prev, nxt in itertools.pairwise(events):
            assert nxt.from_state is prev.to_state
            if nxt.is_transition:
                assert nxt.to_state in TRANSITIONS[prev.to_state]
        assert self.run.state is events[-1].to_state

    @invariant()
    def terminal_states_are_final(self) -> None:
        if self.seen_terminal is not None:
            assert self.run.state is self.seen_terminal
        elif self.run.state in TERMINAL_STATES:
            self.seen_terminal = self.run.state

    @invariant()
    def version_counts_the_events(self) -> None:
        assert self.run.version == len(self.run.events)
        assert [e.version for e in self.run.events] == list(range(1, self.run.version + 1))

    @invariant()
    def timestamps_never_decrease(self) -> None:
        stamps = [e.at for e in self.run.events]
        assert stamps == sorted(stamps)
        assert self.run.updated_at == stamps[-1]

    @invariant()
    def fields_match_the_state(self) -> None:
        run = self.run
        if run.state in NEEDS_CLUSTER:
            assert run.cluster_name
        if run.state in NEEDS_JOB:
            assert run.job_id
        if run.state is S.FAILED:
            assert run.failure_reason
        if run.state in (S.CANCELLED, S.CANCELLING):
            assert run.cancelled_by
        if run.state in (S.REGISTERING, S.DONE):
            assert run.sync_outcome is not None
        if run.state is S.DONE:
            assert run.kg_activity_id
            assert run.kg_entity_ids
        if run.terminal:
            assert not run.stale or run.state is not S.DONE

    @invariant()
    def replaying_the_events_rebuilds_the_run(self) -> None:
        rebuilt = SimulationRun.replay(self.run.header, list(self.run.events))
        assert dumps(rebuilt) == dumps(self.run)
        assert dumps(loads(dumps(self.run))) == dumps(self.run)


TestRunLifecycle = RunLifecycle.TestCase
