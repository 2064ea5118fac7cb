"""The run repositories agree with each other, step by step.

What this proves: driven with the same operations of the RunRepository port in the same
order, the in-memory fake, the SQLite adapter and the DynamoDB adapter (on the session's moto
server) give the same answer to every one of them, and hold the same runs after each one.

A hypothesis state machine (the pattern of hypothesis' own database-agreement test) applies
each operation to every adapter and compares the answers: adds (taken run ids: Conflict;
taken idempotency keys: IdempotencyConflict), gets (unknown runs, other projects: NotFound),
saves with the right and with a wrong expected version (a writer holding a copy it loaded
earlier, a version off by one: Conflict; a run never added), listings with state filters,
cursor paging and limits (a cursor resumed after more writes, or used for another project or
filter; a limit below one), ``list_active``, ``list_watched`` and
``find_by_idempotency_key``, over three projects whose run ids and keys overlap. Runs are
built and moved through their lifecycle by the domain, on a fixed clock.

Answers are compared in a normal form: runs by project, id, state, version, idempotency key
and a digest of the whole record; ``list`` pages in order, with whether a next page exists
(each adapter pages on with its own opaque cursor); ``list_active`` and ``list_watched``
as sets (the port leaves their order open); errors by exception type. After every step the
invariants compare what each adapter holds as a whole: every project's full listing, the
active runs and the watched jobs of all projects.

This is agreement, not correctness: the contract suite (``test_run_repository_contract.py``)
says what the answers must be; here an answer on which the adapters differ is a failure, in
sequences of operations no hand-written test spells out.

Every example starts from empty storage: a new fake, a new SQLite file, a new DynamoDB table.
The variant with DynamoDB runs fewer and shorter examples (moto answers in milliseconds, not
microseconds); it is never skipped.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from obp_workflow.adapters.aws.dynamodb import DynamoRunRepository, create_table
from obp_workflow.adapters.fake.run_repository import FakeRunRepository
from obp_workflow.adapters.sqlite.run_repository import SqliteRunRepository
from obp_workflow.core.errors import DomainError, IllegalTransition
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.jobs import JobObservation, JobState
from obp_workflow.core.records import dumps, loads
from obp_workflow.core.run import (
    ACTIVE_STATES,
    JOB_STATES,
    TERMINAL_STATES,
    JobWatch,
    RunBrief,
    RunHeader,
    RunState,
    SimulationRun,
)
from obp_workflow.core.sync import SyncedFile, SyncOutcome
from obp_workflow.ports.runs import Page, RunRepository
from tests.contract.harness import PROJECT_A, PROJECT_B, REQUESTER, T0, make_request
from tests.contract.harness_repositories import dynamodb_client
from tests.contract.test_run_repository_contract import advance
from tests.moto_server import MotoServer

S = RunState

PROJECT_C = ProjectRef.parse(
    "33333333-3333-4333-8333-333333333333", "cccccccc-cccc-4ccc-8ccc-cccccccccccc"
)
#: By the names the steps of a failing example print.
PROJECTS = {"A": PROJECT_A, "B": PROJECT_B, "C": PROJECT_C}
NAME_OF = {ref.key: name for name, ref in PROJECTS.items()}
#: Few enough that ids are reused (Conflict) and shared by projects (tenancy); of shapes that
#: sort differently as numbers and as text, as the tie-breaker of runs created together.
RUN_IDS = ("run-1", "run-10", "run-2", "run-b", "5f0c4c1e-2d7a-4a51-9d0e-6b1f3c2a7e90")
NEVER_ADDED = "run-never-added"
#: Idempotency keys as the service accepts them (1 to 128 printable ASCII characters).
KEYS = ("submit-1", "submit-2", "Submit-1", "k#|%/~")
#: A few creation instants, so that runs are often created in the same one; the offsets are the
#: same instants written in another time zone.
CREATED = tuple(
    T0.astimezone(zone) + timedelta(minutes=m)
    for m in (0, 1, 2)
    for zone in (UTC, timezone(timedelta(hours=2)))
)
#: How far off a wrong expected version is: stale (behind) or ahead.
WRONG_BY = (-1, 1, -3)

States = frozenset[RunState] | None

projects = st.sampled_from(sorted(PROJECTS))
run_ids = st.sampled_from(RUN_IDS)
maybe_keys = st.none() | st.sampled_from(KEYS)
#: No filter, the filters the service uses (an empty one is no filter), or any few states.
state_filters = st.one_of(
    st.none(),
    st.sampled_from([frozenset(), ACTIVE_STATES, TERMINAL_STATES, JOB_STATES]),
    st.frozensets(st.sampled_from(list(RunState)), min_size=1, max_size=4),
)
limits = st.sampled_from((1, 2, 3, 50))
created_ats = st.sampled_from(CREATED)
run_states = st.sampled_from(list(RunState))
#: What ``add`` is given: project, run id, creation instant, idempotency key, state.
run_specs = st.tuples(projects, run_ids, created_ats, maybe_keys, run_states)


# ==================================================================== moves of a run

OUTCOME = SyncOutcome(
    "lustre-hsm",
    (
        SyncedFile("spikes.dat", 10, "s3://bucket/runs/spikes.dat"),
        SyncedFile("reports/soma.h5", 20, "s3://bucket/runs/reports/soma.h5", "sha256:ab"),
    ),
)


def _job(run: SimulationRun, state: JobState, raw: str) -> JobObservation:
    return JobObservation(run.job_id or "none", state, 0, 0, raw, "squeue")


def _sync_job(run: SimulationRun, state: JobState, raw: str) -> JobObservation:
    return JobObservation(run.sync_job_id or "none", state, 0, 0, raw, "squeue")


def _outages(run: SimulationRun, at: datetime) -> None:
    """A cluster that came and went for weeks: 400 events, a record above 64 KB (which the
    DynamoDB adapter stores compressed)."""
    for n in range(200):
        run.mark_stale(at + timedelta(seconds=2 * n), f"the head node did not answer ({n:03d})")
        run.clear_stale(at + timedelta(seconds=2 * n + 1))


#: What the service does to a run between a load and a save, each at a given instant.
MOVES: Mapping[str, Callable[[SimulationRun, datetime], object]] = {
    "start-provisioning": lambda r, t: r.start_provisioning(t),
    "cluster-ready": lambda r, t: r.cluster_ready(t, "pcluster-aaaaaaaa"),
    "submit-attempt": lambda r, t: r.record_submit_attempt(t),
    "submit-unclear": lambda r, t: r.record_submit_unclear(t),
    "job-submitted": lambda r, t: r.job_submitted(t, "4242"),
    "job-pending": lambda r, t: r.job_observed(t, _job(r, JobState.PENDING, "PD")),
    "job-running": lambda r, t: r.job_observed(t, _job(r, JobState.RUNNING, "R")),
    "job-unknown": lambda r, t: r.job_observed(t, _job(r, JobState.UNKNOWN, "?")),
    "job-completed": lambda r, t: r.job_observed(t, _job(r, JobState.COMPLETED, "CD")),
    "job-failed": lambda r, t: r.job_observed(t, _job(r, JobState.FAILED, "F")),
    "stale": lambda r, t: r.mark_stale(t, "ssh: timed out"),
    "recovered": lambda r, t: r.clear_stale(t),
    "outages": _outages,
    "sync-planned": lambda r, t: r.sync_planned(t, "lustre-hsm", 2),
    "sync-job-started": lambda r, t: r.sync_job_started(t, "4243"),
    "sync-job-running": lambda r, t: r.sync_job_observed(t, _sync_job(r, JobState.RUNNING, "R")),
    "sync-job-done": lambda r, t: r.sync_job_observed(t, _sync_job(r, JobState.COMPLETED, "CD")),
    "sync-attempt-failed": lambda r, t: r.sync_attempt_failed(t, "the copy was incomplete"),
    "sync-confirmed": lambda r, t: r.sync_confirmed(t, OUTCOME),
    "registered": lambda r, t: r.registered(t, "https://kg/act/1", ["https://kg/ent/1"]),
    "fail": lambda r, t: r.fail(t, "gave up"),
    "cancel": lambda r, t: r.request_cancel(t, by="alice"),
    "cancel-confirmed": lambda r, t: r.cancel_confirmed(t),
}
MOVE_NAMES = tuple(MOVES)
moves = st.sampled_from(MOVE_NAMES)


def copy_of(run: SimulationRun) -> SimulationRun:
    return loads(dumps(run))


def moved(run: SimulationRun, name: str) -> tuple[SimulationRun, str]:
    """A copy of ``run`` after the first lawful move from ``name`` on (in MOVES' order, going
    round), thirty seconds after its last change; the copy unchanged when none is lawful."""
    start = MOVE_NAMES.index(name)
    for candidate in MOVE_NAMES[start:] + MOVE_NAMES[:start]:
        changed = copy_of(run)
        try:
            MOVES[candidate](changed, run.updated_at + timedelta(seconds=30))
        except IllegalTransition:
            continue
        return changed, candidate
    return copy_of(run), "none"


def new_run(
    project: ProjectRef, run_id: str, created: datetime, key: str | None, state: RunState
) -> SimulationRun:
    header = RunHeader(
        run_id=run_id,
        project=project,
        requested_by=REQUESTER,
        request=make_request(command=["run-sim", "--seed", "7"], outputs=["spikes.dat"]),
        created_at=created,
        idempotency_key=key,
    )
    return advance(SimulationRun.accept(header), state)


# ==================================================================== normal forms of answers


@dataclass(frozen=True)
class Seen:
    """A run as an adapter answered it; ``record`` is a digest of everything it holds."""

    project: str
    run_id: str
    state: str
    version: int
    key: str | None
    record: str

    @classmethod
    def of(cls, run: SimulationRun) -> Seen:
        digest = hashlib.sha256(dumps(run).encode()).hexdigest()[:12]
        return cls(
            NAME_OF.get(run.project.key, run.project.key),
            run.run_id,
            run.state.value,
            run.version,
            run.header.idempotency_key,
            digest,
        )


@dataclass(frozen=True)
class SeenPage:
    runs: tuple[Seen, ...]
    more: bool


@dataclass(frozen=True)
class Raised:
    """An operation raised: only the exception's type is compared."""

    error: str
    domain: bool


def seen_page(page: Page) -> SeenPage:
    return SeenPage(tuple(Seen.of(r) for r in page.runs), page.next_cursor is not None)


def seen_briefs(briefs: Sequence[RunBrief]) -> tuple[tuple[str, str, str, bool], ...]:
    return tuple(
        sorted(
            (NAME_OF.get(b.project.key, "?"), b.run_id, b.state.value, b.watching) for b in briefs
        )
    )


def seen_watches(watches: Sequence[JobWatch]) -> tuple[tuple[str, str, str, str | None, bool], ...]:
    return tuple(
        sorted(
            (NAME_OF.get(w.project.key, "?"), w.run_id, w.job_id, w.last_raw, w.stale)
            for w in watches
        )
    )


def answer_of(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:  # compared by type: a non-domain error is a failure of its own
        return Raised(type(exc).__name__, isinstance(exc, DomainError))


@dataclass(frozen=True)
class Resume:
    """Where a paged listing stopped: its query and each adapter's own cursor."""

    project: str
    states: States
    cursors: Mapping[str, str]


# ==================================================================== the adapters


@dataclass
class Opened:
    """One adapter on storage of its own, and how to let go of that storage."""

    name: str
    repo: RunRepository
    close: Callable[[], None]


Opener = Callable[[], Opened]


def fake_opener() -> Opener:
    return lambda: Opened("fake", FakeRunRepository(), lambda: None)


def sqlite_opener(root: Path) -> Opener:
    def open_one() -> Opened:
        folder = Path(tempfile.mkdtemp(prefix="runs-", dir=root))
        repo = SqliteRunRepository(folder / "runs.sqlite3")

        def close() -> None:
            repo.close()
            shutil.rmtree(folder, ignore_errors=True)

        return Opened("sqlite", repo, close)

    return open_one


def dynamodb_opener(moto: MotoServer) -> Opener:
    # One client for every example (making one takes a tenth of a second); a table each.
    client = dynamodb_client(moto.endpoint)
    numbers = itertools.count(1)

    def open_one() -> Opened:
        table = f"agreement-{next(numbers)}"
        create_table(client, table)

        def close() -> None:
            with suppress(ClientError, BotoCoreError):
                client.delete_table(TableName=table)

        return Opened("dynamodb", DynamoRunRepository(client, table), close)

    return open_one


# ==================================================================== the machine


@dataclass(frozen=True)
class Stored:
    """A run every adapter accepted: its project's name and its id."""

    project: str
    run_id: str


class RepositoriesAgree(RuleBasedStateMachine):
    """Every rule: one operation, applied to every adapter, and the same answer from each."""

    stored = Bundle("stored")
    held = Bundle("held")
    resumable = Bundle("resumable")

    def __init__(self, openers: Sequence[Opener]) -> None:
        super().__init__()
        self.adapters: list[Opened] = []
        for opener in openers:
            self.adapters.append(opener())

    def teardown(self) -> None:
        for adapter in self.adapters:
            adapter.close()

    def agree(self, what: str, call: Callable[[Opened], object]) -> object:
        """Apply ``call`` to every adapter; their answers must be equal. The common answer."""
        answers = [(a.name, answer_of(functools.partial(call, a))) for a in self.adapters]
        first_name, first = answers[0]
        for name, answer in answers[1:]:
            assert answer == first, (
                f"{what}: the adapters disagree\n  {first_name}: {first!r}\n  {name}: {answer!r}"
            )
        if isinstance(first, Raised) and not first.domain:
            raise AssertionError(f"{what}: every adapter raised {first.error}, not a domain error")
        return first

    def load(self, project: str, run_id: str) -> SimulationRun | None:
        """The run as every adapter has it (the same, else a failure); None when not found."""
        ref = PROJECTS[project]
        loaded = self.agree(f"get({project}, {run_id})", lambda a: Seen.of(a.repo.get(ref, run_id)))
        return None if isinstance(loaded, Raised) else self.adapters[0].repo.get(ref, run_id)

    # ---------------------------------------------------------------- writes

    @initialize(target=stored, runs=st.lists(run_specs, min_size=3, max_size=12))
    def add_some(
        self, runs: list[tuple[str, str, datetime, str | None, RunState]]
    ) -> MultipleResults[Stored]:
        """Start from a few runs (some of them refused) rather than from nothing."""
        added = [self.add(*spec) for spec in runs]
        return multiple(*(stored for results in added for stored in results))

    @rule(
        target=stored,
        project=projects,
        run_id=run_ids,
        created=created_ats,
        key=maybe_keys,
        state=run_states,
    )
    def add(
        self, project: str, run_id: str, created: datetime, key: str | None, state: RunState
    ) -> MultipleResults[Stored]:
        """A new run, or a refusal: its id is taken (Conflict), its key is (IdempotencyConflict)."""
        run = new_run(PROJECTS[project], run_id, created, key, state)
        done = self.agree(
            f"add({project}, {run!r}, key={key!r})", lambda a: a.repo.add(copy_of(run))
        )
        return multiple() if isinstance(done, Raised) else multiple(Stored(project, run_id))

    @rule(
        which=stored,
        move=moves,
        right_version=st.booleans(),
        wrong_by=st.sampled_from(WRONG_BY),
    )
    def load_change_save(
        self, which: Stored, move: str, right_version: bool, wrong_by: int
    ) -> None:
        """What the service does: load, change, save with the version it loaded (or with a
        wrong one, off by ``wrong_by``: Conflict)."""
        run = self.load(which.project, which.run_id)
        assert run is not None
        expected = run.version + (0 if right_version else wrong_by)
        changed, did = moved(run, move)
        self.agree(
            f"save({which.project}, {changed!r} after {did}, expected_version={expected})",
            lambda a: a.repo.save(copy_of(changed), expected),
        )

    @rule(project=projects, move=moves)
    def save_a_run_never_added(self, project: str, move: str) -> None:
        run = new_run(PROJECTS[project], NEVER_ADDED, CREATED[0], None, S.ACCEPTED)
        changed, did = moved(run, move)
        self.agree(
            f"save({project}, {changed!r} after {did}, expected_version=1)",
            lambda a: a.repo.save(copy_of(changed), 1),
        )

    @rule(target=held, which=stored)
    def hold_a_copy(self, which: Stored) -> MultipleResults[SimulationRun]:
        """A writer loads a run and keeps it (the bundle); it may save it much later."""
        run = self.load(which.project, which.run_id)
        return multiple() if run is None else multiple(run)

    @rule(run=held, move=moves)
    def save_the_held_copy(self, run: SimulationRun, move: str) -> None:
        """Saved with the version it was loaded with: Conflict when anyone saved since."""
        changed, did = moved(run, move)
        self.agree(
            f"save({NAME_OF[run.project.key]}, {changed!r} after {did}, "
            f"expected_version={run.version})",
            lambda a: a.repo.save(copy_of(changed), run.version),
        )

    # ---------------------------------------------------------------- reads

    @rule(which=stored)
    def get(self, which: Stored) -> None:
        self.load(which.project, which.run_id)

    @rule(project=projects, run_id=run_ids | st.just(NEVER_ADDED))
    def get_anything(self, project: str, run_id: str) -> None:
        """Any id in any project: NotFound unless that project has it."""
        self.load(project, run_id)

    @rule(project=projects, key=st.sampled_from(KEYS))
    def find_by_idempotency_key(self, project: str, key: str) -> None:
        def find(a: Opened) -> Seen | None:
            found = a.repo.find_by_idempotency_key(PROJECTS[project], key)
            return None if found is None else Seen.of(found)

        self.agree(f"find_by_idempotency_key({project}, {key!r})", find)

    @rule(target=resumable, project=projects, states=state_filters, limit=limits)
    def list_every_page(self, project: str, states: States, limit: int) -> MultipleResults[Resume]:
        """Page through a listing to its end, each adapter with its own cursors. Every page's
        cursors are kept to resume from later (the bundle)."""
        cursors: dict[str, str | None] = {a.name: None for a in self.adapters}
        kept: list[Resume] = []
        for number in itertools.count(1):
            page = self.agree(
                f"list({project}, {_states(states)}, limit={limit}) page {number}",
                lambda a: _page(a, project, states, cursors, limit),
            )
            kept.extend(_resume(page, project, states, cursors))
            if not isinstance(page, SeenPage) or not page.more:
                return multiple(*kept)
            assert number < 50, "the listing never ends"
        raise AssertionError("unreachable")

    @rule(
        target=resumable,
        where=resumable,
        elsewhere=st.none() | st.tuples(projects, state_filters),
        limit=limits,
    )
    def resume(
        self, where: Resume, elsewhere: tuple[str, States] | None, limit: int
    ) -> MultipleResults[Resume]:
        """Resume a listing (perhaps after writes) with its cursor; or use the cursor for
        another project or filter (InvalidRequest, unless it is the same listing)."""
        project, states = elsewhere or (where.project, where.states)
        cursors: dict[str, str | None] = dict(where.cursors)
        page = self.agree(
            f"list({project}, {_states(states)}, cursor of {where.project}, "
            f"{_states(where.states)}, "
            f"limit={limit})",
            lambda a: _page(a, project, states, cursors, limit),
        )
        return _resume(page, project, states, cursors)

    @rule(project=projects, states=state_filters, limit=st.sampled_from((0, -1)))
    def list_with_a_limit_below_one(self, project: str, states: States, limit: int) -> None:
        """The service never asks for fewer than one run a page; an adapter refuses it."""
        cursors: dict[str, str | None] = {a.name: None for a in self.adapters}
        self.agree(
            f"list({project}, {_states(states)}, limit={limit})",
            lambda a: _page(a, project, states, cursors, limit),
        )

    @rule(project=st.none() | projects)
    def list_active(self, project: str | None) -> None:
        ref = None if project is None else PROJECTS[project]
        self.agree(f"list_active({project})", lambda a: seen_briefs(a.repo.list_active(ref)))

    @rule(project=st.none() | projects)
    def list_watched(self, project: str | None) -> None:
        ref = None if project is None else PROJECTS[project]
        self.agree(f"list_watched({project})", lambda a: seen_watches(a.repo.list_watched(ref)))

    # ---------------------------------------------------------------- after every step

    @invariant()
    def every_project_lists_the_same_runs(self) -> None:
        for project in PROJECTS:
            self.agree(f"list({project}, limit=500)", functools.partial(_everything, project))

    @invariant()
    def the_same_runs_are_active(self) -> None:
        self.agree("list_active(None)", lambda a: seen_briefs(a.repo.list_active()))

    @invariant()
    def the_same_jobs_are_watched(self) -> None:
        self.agree("list_watched(None)", lambda a: seen_watches(a.repo.list_watched()))


def _page(
    a: Opened, project: str, states: States, cursors: dict[str, str | None], limit: int
) -> SeenPage:
    """One page for adapter ``a`` from its cursor in ``cursors``, which becomes its next."""
    page = a.repo.list(PROJECTS[project], states, cursors[a.name], limit)
    cursors[a.name] = page.next_cursor
    return seen_page(page)


def _everything(project: str, a: Opened) -> SeenPage:
    return seen_page(a.repo.list(PROJECTS[project], None, None, 500))


def _states(states: States) -> str:
    return "None" if states is None else "{" + ",".join(sorted(s.value for s in states)) + "}"


def _resume(
    page: object, project: str, states: States, cursors: Mapping[str, str | None]
) -> MultipleResults[Resume]:
    """Where to resume the listing that answered ``page``: nowhere when it raised or ended."""
    if not isinstance(page, SeenPage) or not page.more:
        return multiple()
    return multiple(Resume(project, states, {n: c for n, c in cursors.items() if c is not None}))


# ==================================================================== the test

VARIANTS = [
    pytest.param(("fake", "sqlite"), id="fake-vs-sqlite"),
    pytest.param(("fake", "sqlite", "dynamodb"), id="fake-vs-sqlite-vs-dynamodb"),
]


def _settings(names: Sequence[str]) -> settings:
    """The profile's settings; with DynamoDB on moto, fewer and shorter examples.

    Without the explain phase: once an example failed, it traces every line of every replay
    while shrinking (sys.settrace before Python 3.12), which makes shrinking a disagreement
    take minutes; the failure message already names the operation and every answer."""
    profile = settings()  # the loaded profile's values
    phases = [phase for phase in profile.phases if phase is not Phase.explain]
    if "dynamodb" not in names:
        return settings(phases=phases)
    return settings(
        phases=phases,
        max_examples=max(5, profile.max_examples // 6),
        stateful_step_count=min(profile.stateful_step_count, 30),
    )


# Passing, this takes seconds. A disagreement found with DynamoDB on moto can take minutes to
# shrink (every replay calls moto); hypothesis stops shrinking after five minutes and reports
# what it has, which the default timeout of 300 s would cut short.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("names", VARIANTS)
def test_run_repositories_agree_step_by_step(
    names: tuple[str, ...], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    made: dict[str, Callable[[], Opener]] = {
        "fake": fake_opener,
        "sqlite": lambda: sqlite_opener(tmp_path),
        "dynamodb": lambda: dynamodb_opener(request.getfixturevalue("moto")),
    }
    openers = [made[name]() for name in names]
    run_state_machine_as_test(lambda: RepositoriesAgree(openers), settings=_settings(names))
