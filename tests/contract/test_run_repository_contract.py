"""The RunRepository contract: durable runs, optimistic concurrency, tenancy, opaque cursors."""

from __future__ import annotations

import base64
import functools
import json
import multiprocessing
import random
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obp_workflow.core.errors import (
    Conflict,
    CorruptRecord,
    DomainError,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
)
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.jobs import JobObservation, JobState
from obp_workflow.core.run import TERMINAL_STATES, RunState, SimulationRun
from obp_workflow.core.sync import SyncedFile, SyncOutcome
from obp_workflow.ports.runs import RunRepository
from tests.contract.harness import (
    PROJECT_A,
    PROJECT_B,
    T0,
    Damage,
    RunRepositoryHarness,
    make_header,
    make_request,
)
from tests.contract.harness_repositories import SharedStorageHarness

S = RunState


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def new_run(
    project: ProjectRef = PROJECT_A,
    *,
    minute: float = 0,
    key: str | None = None,
    outputs: tuple[str, ...] = ("spikes.dat", "reports/soma.h5"),
) -> SimulationRun:
    header = make_header(
        project,
        at=at(minute),
        idempotency_key=key,
        request=make_request(command=["run-sim", "--seed", "7"], outputs=outputs),
    )
    return SimulationRun.accept(header)


def advance(run: SimulationRun, target: RunState) -> SimulationRun:
    """Move a fresh run to ``target`` along a lawful path that sets many facts."""
    t = run.updated_at
    step = timedelta(seconds=30)
    if target is S.ACCEPTED:
        return run
    if target is S.CANCELLED:
        run.request_cancel(t + step, by="alice")
        return run
    run.start_provisioning(t + step)
    if target is S.PROVISIONING:
        return run
    if target is S.FAILED:
        run.fail(t + 2 * step, "the cluster could not be created: quota")
        return run
    run.cluster_ready(t + 2 * step, "pcluster-aaaaaaaa")
    if target is S.SUBMITTING:
        return run
    run.record_submit_attempt(t + 3 * step)
    run.job_submitted(t + 4 * step, "4242")
    if target is S.QUEUED:
        return run
    if target is S.CANCELLING:
        run.request_cancel(t + 5 * step, by="alice", reason="wrong seed")
        return run
    run.mark_stale(t + 5 * step, "ssh: timed out")
    run.job_observed(
        t + 6 * step, JobObservation("4242", JobState.RUNNING, raw="r", source="squeue")
    )
    if target is S.RUNNING:
        return run
    run.job_observed(
        t + 7 * step, JobObservation("4242", JobState.COMPLETED, 0, 0, "c", source="sacct")
    )
    if target is S.SYNCING:
        return run
    run.sync_planned(t + 8 * step, "lustre-hsm", 2)
    run.sync_job_started(t + 9 * step, "4243")
    run.sync_job_observed(
        t + 10 * step, JobObservation("4243", JobState.COMPLETED, 0, 0, "s", source="squeue")
    )
    outcome = SyncOutcome(
        "lustre-hsm",
        (
            SyncedFile("spikes.dat", 10, "s3://bucket/runs/spikes.dat"),
            SyncedFile("reports/soma.h5", 20, "s3://bucket/runs/reports/soma.h5", "sha256:ab"),
        ),
    )
    run.sync_confirmed(t + 11 * step, outcome)
    if target is S.REGISTERING:
        return run
    run.registered(t + 12 * step, "https://kg/act/1", ["https://kg/ent/1", "https://kg/ent/2"])
    assert target is S.DONE
    return run


def facts(run: SimulationRun) -> dict[str, Any]:
    """Everything a run holds: header, state, version, events and every fact."""
    return dict(vars(run))


def stored(repo: RunRepository, run: SimulationRun) -> dict[str, Any]:
    return facts(repo.get(run.project, run.run_id))


def all_pages(
    repo: RunRepository, project: ProjectRef, states: set[RunState] | None = None, limit: int = 2
) -> list[list[SimulationRun]]:
    pages: list[list[SimulationRun]] = []
    cursor: str | None = None
    while True:
        page = repo.list(project, states, cursor, limit)
        pages.append(list(page.runs))
        assert len(pages) < 100, "the cursor never ends"
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor


# ==================================================================== round trip and tenancy


@pytest.mark.parametrize("state", [S.ACCEPTED, S.CANCELLING, S.FAILED, S.RUNNING, S.DONE])
def test_a_run_read_back_equals_the_run_added(
    run_repository_harness: RunRepositoryHarness, state: RunState
) -> None:
    repo = run_repository_harness.repo
    run = advance(new_run(key=f"key-{state.value}"), state)
    repo.add(run)
    got = repo.get(PROJECT_A, run.run_id)
    assert got.state is state
    assert got.version == run.version == len(run.events)
    assert got.header == run.header
    assert got.events == run.events
    assert facts(got) == facts(run)


def test_the_repository_keeps_its_own_copy(run_repository_harness: RunRepositoryHarness) -> None:
    repo = run_repository_harness.repo
    run = new_run()
    repo.add(run)
    before = stored(repo, run)
    run.start_provisioning(at(1))  # changed locally, never saved
    first = repo.get(PROJECT_A, run.run_id)
    first.start_provisioning(at(2))
    assert stored(repo, run) == before


def test_get_of_an_unknown_run_is_not_found(run_repository_harness: RunRepositoryHarness) -> None:
    with pytest.raises(NotFound):
        run_repository_harness.repo.get(PROJECT_A, "run-never-added")


def test_a_run_of_project_a_does_not_exist_in_project_b(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    run = new_run(PROJECT_A, key="shared-key")
    repo.add(run)
    with pytest.raises(NotFound):
        repo.get(PROJECT_B, run.run_id)
    assert repo.find_by_idempotency_key(PROJECT_B, "shared-key") is None
    assert repo.list(PROJECT_B).runs == []
    assert repo.list_active(PROJECT_B) == []
    with pytest.raises((NotFound, Conflict)):
        repo.save(_moved_to(run, PROJECT_B), 1)
    assert stored(repo, run)["state"] is S.ACCEPTED


def _moved_to(run: SimulationRun, project: ProjectRef) -> SimulationRun:
    """The same run id and history, claimed under another project."""
    header = make_header(project, run.run_id, at=run.header.created_at)
    moved = SimulationRun.accept(header)
    moved.start_provisioning(at(1))
    return moved


# ==================================================================== optimistic concurrency


def test_save_with_the_expected_version_stores_the_run(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    run = new_run()
    repo.add(run)
    loaded = repo.get(PROJECT_A, run.run_id)
    version = loaded.version
    loaded.start_provisioning(at(1))
    loaded.cluster_ready(at(2), "pcluster-aaaaaaaa")
    repo.save(loaded, version)
    assert stored(repo, run) == facts(loaded)
    assert repo.get(PROJECT_A, run.run_id).version == version + 2


def test_save_with_a_stale_version_is_conflict_and_changes_nothing(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    run = new_run()
    repo.add(run)
    fresh = repo.get(PROJECT_A, run.run_id)
    fresh.start_provisioning(at(1))
    repo.save(fresh, 1)
    before = stored(repo, run)
    stale = repo.get(PROJECT_A, run.run_id)
    stale.fail(at(2), "boom")
    for wrong in (1, 0, 3, 99):
        with pytest.raises(Conflict):
            repo.save(stale, wrong)
    assert stored(repo, run) == before


def test_save_of_a_run_never_added_stores_nothing(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    run = new_run()
    run.start_provisioning(at(1))
    with pytest.raises((NotFound, Conflict)):
        repo.save(run, 1)
    with pytest.raises(NotFound):
        repo.get(PROJECT_A, run.run_id)


def test_of_two_writers_racing_on_one_version_exactly_one_wins(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    run = advance(new_run(), S.SUBMITTING)
    repo.add(run)
    first, second = repo.get(PROJECT_A, run.run_id), repo.get(PROJECT_A, run.run_id)
    version = first.version
    first.record_submit_attempt(at(10))
    second.request_cancel(at(10), by="bob")
    repo.save(first, version)
    with pytest.raises(Conflict):
        repo.save(second, version)
    assert stored(repo, run) == facts(first)


def _race(repo: RunRepository, run_id: str, threads: int, when: datetime) -> list[object]:
    """``threads`` writers load the run, all of them, then each records a change and saves it.
    What each got: True when its save went through, else the exception."""
    loaded_all = threading.Barrier(threads)
    outcomes: list[object] = [None] * threads

    def writer(n: int) -> None:
        try:
            mine = repo.get(PROJECT_A, run_id)
            version = mine.version
            mine.record_submit_attempt(when)
            loaded_all.wait(timeout=10)  # every writer holds the same version
            repo.save(mine, version)
            outcomes[n] = True
        except BaseException as exc:
            outcomes[n] = exc

    pool = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=30)
    return outcomes


def test_threads_racing_on_each_version_let_exactly_one_win(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    run = advance(new_run(), S.SUBMITTING)
    repo.add(run)
    threads, rounds = 8, 6
    for round_no in range(rounds):
        outcomes = _race(repo, run.run_id, threads, at(10 + round_no))
        assert [o for o in outcomes if not isinstance(o, (bool, Conflict))] == []
        wins = outcomes.count(True)
        assert wins == 1, f"round {round_no}: {wins} writers won"
        assert sum(isinstance(o, Conflict) for o in outcomes) == threads - 1
    final = repo.get(PROJECT_A, run.run_id)
    assert final.submit_attempts == rounds
    assert final.version == run.version + rounds


def test_adding_an_existing_run_id_is_conflict(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    run = new_run()
    repo.add(run)
    before = stored(repo, run)
    again = SimulationRun.accept(make_header(PROJECT_A, run.run_id, at=at(5)))
    with pytest.raises(Conflict):
        repo.add(again)
    with pytest.raises(Conflict):
        repo.add(run)
    assert stored(repo, run) == before


# ==================================================================== idempotency keys


def test_find_by_idempotency_key_returns_the_run(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    run = new_run(key="submit-7f3a")
    repo.add(run)
    found = repo.find_by_idempotency_key(PROJECT_A, "submit-7f3a")
    assert found is not None
    assert facts(found) == facts(run)
    assert repo.find_by_idempotency_key(PROJECT_A, "submit-other") is None


def test_a_key_already_used_in_the_project_is_idempotency_conflict(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    first = new_run(key="submit-7f3a")
    repo.add(first)
    second = new_run(key="submit-7f3a", minute=1)
    with pytest.raises(IdempotencyConflict):
        repo.add(second)
    with pytest.raises(NotFound):
        repo.get(PROJECT_A, second.run_id)
    found = repo.find_by_idempotency_key(PROJECT_A, "submit-7f3a")
    assert found is not None
    assert found.run_id == first.run_id
    assert [r.run_id for r in repo.list(PROJECT_A).runs] == [first.run_id]


def test_the_same_key_in_another_project_is_another_run(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    in_a, in_b = new_run(PROJECT_A, key="submit-7f3a"), new_run(PROJECT_B, key="submit-7f3a")
    repo.add(in_a)
    repo.add(in_b)
    found_a = repo.find_by_idempotency_key(PROJECT_A, "submit-7f3a")
    found_b = repo.find_by_idempotency_key(PROJECT_B, "submit-7f3a")
    assert found_a is not None
    assert found_b is not None
    assert (found_a.run_id, found_b.run_id) == (in_a.run_id, in_b.run_id)


# ==================================================================== listing


def _add_all(repo: RunRepository, runs: list[SimulationRun]) -> list[SimulationRun]:
    for run in runs:
        repo.add(run)
    return runs


def _newest_first(runs: list[SimulationRun]) -> list[str]:
    """The ids newest first (for runs created at distinct instants)."""
    ordered = sorted(runs, key=lambda r: r.header.created_at, reverse=True)
    return [r.run_id for r in ordered]


def assert_each_once_newest_first(
    listed: list[SimulationRun], expected: list[SimulationRun]
) -> None:
    """Every expected run exactly once, newest first (the order of runs created in the same
    instant is the adapter's choice, but the same on every page)."""
    ids = [r.run_id for r in listed]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    assert twice == [], f"listed twice: {twice}"
    assert sorted(ids) == sorted(r.run_id for r in expected)
    stamps = [r.header.created_at for r in listed]
    assert stamps == sorted(stamps, reverse=True)


def test_list_is_newest_first(run_repository_harness: RunRepositoryHarness) -> None:
    repo = run_repository_harness.repo
    minutes = [5, 1, 9, 3, 7]
    runs = _add_all(repo, [new_run(minute=m) for m in minutes])
    page = repo.list(PROJECT_A)
    assert [r.run_id for r in page.runs] == _newest_first(runs)
    assert [r.header.created_at for r in page.runs] == sorted(
        (r.header.created_at for r in runs), reverse=True
    )
    assert page.next_cursor is None


def test_list_filters_by_states(run_repository_harness: RunRepositoryHarness) -> None:
    repo = run_repository_harness.repo
    targets = [S.ACCEPTED, S.FAILED, S.RUNNING, S.FAILED, S.DONE, S.CANCELLED, S.ACCEPTED]
    runs = _add_all(repo, [advance(new_run(minute=i), s) for i, s in enumerate(targets)])
    _add_all(repo, [advance(new_run(PROJECT_B, minute=i), S.FAILED) for i in range(2)])
    for wanted in ({S.FAILED}, {S.ACCEPTED, S.DONE}, {S.QUEUED}):
        listed = repo.list(PROJECT_A, wanted).runs
        assert [r.run_id for r in listed] == _newest_first([r for r in runs if r.state in wanted])
        assert all(r.state in wanted and r.project == PROJECT_A for r in listed)


def _paging_fixture(repo: RunRepository) -> list[SimulationRun]:
    # Seven runs of A, three of them created in the same instant, and noise in project B.
    minutes = [4, 2, 2, 2, 6, 0, 9]
    states = [S.ACCEPTED, S.FAILED, S.ACCEPTED, S.FAILED, S.DONE, S.FAILED, S.ACCEPTED]
    runs = [advance(new_run(minute=m), s) for m, s in zip(minutes, states, strict=True)]
    _add_all(repo, [new_run(PROJECT_B, minute=m) for m in (3, 8)])
    return _add_all(repo, runs)


def test_pages_of_two_return_every_run_once_newest_first(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    runs = _paging_fixture(repo)
    pages = all_pages(repo, PROJECT_A, limit=2)
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert_each_once_newest_first([r for page in pages for r in page], runs)


def test_pages_of_a_state_filter_return_every_matching_run_once(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    runs = _paging_fixture(repo)
    pages = all_pages(repo, PROJECT_A, {S.FAILED, S.DONE}, limit=2)
    expected = [r for r in runs if r.state in (S.FAILED, S.DONE)]
    assert len(pages) == 2
    listed = [r for page in pages for r in page]
    assert_each_once_newest_first(listed, expected)
    assert all(r.state in (S.FAILED, S.DONE) for r in listed)


def test_runs_added_between_pages_neither_repeat_nor_hide_older_runs(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    runs = _paging_fixture(repo)
    first = repo.list(PROJECT_A, limit=2)
    assert first.next_cursor is not None
    repo.add(new_run(minute=30))  # newer than everything listed
    seen = list(first.runs)
    cursor: str | None = first.next_cursor
    while cursor is not None:
        page = repo.list(PROJECT_A, None, cursor, 2)
        seen += page.runs
        cursor = page.next_cursor
    assert_each_once_newest_first(seen, runs)


# ==================================================================== cursors from elsewhere


def _a_cursor(repo: RunRepository, states: set[RunState] | None = None) -> str:
    page = repo.list(PROJECT_A, states, None, 1)
    assert page.next_cursor is not None
    return page.next_cursor


@pytest.mark.parametrize(
    ("made_for", "used_for"),
    [
        ((PROJECT_A, None), (PROJECT_B, None)),
        ((PROJECT_A, {S.FAILED}), (PROJECT_B, {S.FAILED})),
        ((PROJECT_A, {S.FAILED}), (PROJECT_A, None)),
        ((PROJECT_A, None), (PROJECT_A, {S.FAILED})),
        ((PROJECT_A, {S.FAILED}), (PROJECT_A, {S.FAILED, S.ACCEPTED})),
    ],
    ids=[
        "other-project",
        "other-project-same-filter",
        "filter-dropped",
        "filter-added",
        "filter-widened",
    ],
)
def test_a_cursor_used_with_another_query_is_invalid_request(
    run_repository_harness: RunRepositoryHarness,
    made_for: tuple[ProjectRef, set[RunState] | None],
    used_for: tuple[ProjectRef, set[RunState] | None],
) -> None:
    repo = run_repository_harness.repo
    _paging_fixture(repo)
    _add_all(repo, [advance(new_run(PROJECT_B, minute=m), S.FAILED) for m in (1, 5, 7)])
    assert made_for[0] == PROJECT_A
    cursor = _a_cursor(repo, made_for[1])
    with pytest.raises(InvalidRequest):
        repo.list(used_for[0], used_for[1], cursor, 2)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _garbage_cursors(real: str) -> dict[str, str]:
    rng = random.Random(20260301)
    return {
        "random-b64": _b64(rng.randbytes(48)),
        "random-b64-short": _b64(rng.randbytes(5)),
        "truncated-half": real[: len(real) // 2],
        "truncated-by-1": real[:-1],
        "truncated-by-3": real[:-3],
        "forged-other-project": _b64(
            json.dumps({"p": PROJECT_B.key, "s": [], "a": "9999|zzzz"}).encode()
        ),
        "forged-other-project-std-b64": base64.b64encode(
            json.dumps({"p": PROJECT_B.key, "s": [], "a": ""}).encode()
        ).decode(),
        "b64-json-list": _b64(b"[1, 2, 3]"),
        "b64-json-null": _b64(b"null"),
        "b64-json-number": _b64(b"42"),
        "b64-empty-object": _b64(b"{}"),
        "b64-latin1": _b64("café".encode("latin-1")),
        "not-b64": "!!!!$$$$",
        "non-ascii": "curseur-é🙂",
        "sql": "' OR 1=1 --",
        "long": "A" * 10_000,
        "whitespace": "   ",
    }


_GARBAGE_IDS = sorted(_garbage_cursors("x" * 40))


@pytest.mark.parametrize("kind", _GARBAGE_IDS)
def test_a_garbage_or_forged_cursor_is_invalid_request(
    run_repository_harness: RunRepositoryHarness, kind: str
) -> None:
    repo = run_repository_harness.repo
    _paging_fixture(repo)
    cursor = _garbage_cursors(_a_cursor(repo))[kind]
    with pytest.raises(InvalidRequest):
        repo.list(PROJECT_A, None, cursor, 2)


_forged_payloads = st.fixed_dictionaries(
    {
        "p": st.sampled_from([PROJECT_A.key, PROJECT_B.key, "", "*"]),
        "s": st.lists(st.sampled_from([s.value for s in RunState]), max_size=3),
        "a": st.one_of(st.text(max_size=40), st.integers(), st.none()),
    }
).map(lambda d: _b64(json.dumps(d).encode()))
_any_cursor = st.one_of(
    st.text(min_size=1, max_size=200),
    st.binary(min_size=1, max_size=200).map(_b64),
    _forged_payloads,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cursor=_any_cursor)
def test_any_cursor_is_refused_or_lists_only_this_project(
    run_repository_harness: RunRepositoryHarness, cursor: str
) -> None:
    repo = run_repository_harness.repo
    if not repo.list(PROJECT_B).runs:  # the same repository serves every example
        _paging_fixture(repo)
    try:
        page = repo.list(PROJECT_A, None, cursor, 3)
    except InvalidRequest:
        return
    assert all(r.project == PROJECT_A for r in page.runs)
    if page.next_cursor is not None:
        repo.list(PROJECT_A, None, page.next_cursor, 3)


# ==================================================================== active runs


def test_list_active_is_exactly_the_runs_not_yet_terminal(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    runs = _add_all(
        repo,
        [
            advance(new_run(project, minute=i), state)
            for i, state in enumerate(RunState)
            for project in (PROJECT_A, PROJECT_B)
        ],
    )

    def ids(found: Any) -> list[str]:
        return sorted(r.run_id for r in found)

    def active(project: ProjectRef | None) -> list[str]:
        return ids(
            r for r in runs if r.state not in TERMINAL_STATES and project in (None, r.project)
        )

    assert len(active(PROJECT_A)) == len(RunState) - 3
    assert ids(repo.list_active(PROJECT_A)) == active(PROJECT_A)
    assert ids(repo.list_active(PROJECT_B)) == active(PROJECT_B)
    assert ids(repo.list_active()) == active(None)
    # Each is the run's brief as of its last save: what a round needs, without the run.
    by_id = {r.run_id: r for r in runs}
    assert sorted(repo.list_active(), key=lambda b: b.run_id) == sorted(
        (by_id[i].brief() for i in active(None)), key=lambda b: b.run_id
    )


def test_list_active_follows_saves(run_repository_harness: RunRepositoryHarness) -> None:
    repo = run_repository_harness.repo
    run = _add_all(repo, [new_run()])[0]
    assert [r.run_id for r in repo.list_active(PROJECT_A)] == [run.run_id]
    loaded = repo.get(PROJECT_A, run.run_id)
    loaded.fail(at(1), "gave up")
    repo.save(loaded, 1)
    assert repo.list_active(PROJECT_A) == []
    assert repo.list_active() == []


# ==================================================================== watched jobs


def test_list_watched_is_the_watch_of_every_run_with_a_job_on_the_scheduler(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    repo = run_repository_harness.repo
    runs = [
        advance(new_run(project, minute=i), state)
        for i, (project, state) in enumerate(
            [
                (PROJECT_A, S.QUEUED),
                (PROJECT_A, S.RUNNING),
                (PROJECT_A, S.SUBMITTING),
                (PROJECT_B, S.QUEUED),
                (PROJECT_A, S.DONE),
                (PROJECT_B, S.CANCELLING),
            ]
        )
    ]
    # A SYNCING run whose elevated sync job is still running is watched too.
    syncing = advance(new_run(PROJECT_B, minute=10), S.SYNCING)
    syncing.sync_planned(at(20), "lustre-hsm", 2)
    syncing.sync_job_started(at(21), "5151")
    runs.append(syncing)
    _add_all(repo, runs)

    def watches(project: ProjectRef | None) -> set[tuple[str, str, str | None, bool]]:
        return {(w.run_id, w.job_id, w.last_raw, w.stale) for w in repo.list_watched(project)}

    def expected(project: ProjectRef | None) -> set[tuple[str, str, str | None, bool]]:
        out = set()
        for run in runs:
            w = run.watch()
            if w is not None and project in (None, run.project):
                out.add((w.run_id, w.job_id, w.last_raw, w.stale))
        return out

    assert watches(None) == expected(None)
    assert watches(PROJECT_A) == expected(PROJECT_A)
    assert watches(PROJECT_B) == expected(PROJECT_B)
    assert {w[1] for w in watches(PROJECT_B)} == {"4242", "5151"}
    assert len(watches(None)) == 4


def test_list_watched_follows_saves(run_repository_harness: RunRepositoryHarness) -> None:
    repo = run_repository_harness.repo
    run = _add_all(repo, [advance(new_run(), S.QUEUED)])[0]
    loaded = repo.get(PROJECT_A, run.run_id)
    version = loaded.version
    loaded.mark_stale(at(30), "ssh: timed out")
    repo.save(loaded, version)
    [watch] = repo.list_watched(PROJECT_A)
    assert (watch.job_id, watch.stale) == ("4242", True)
    loaded = repo.get(PROJECT_A, run.run_id)
    version = loaded.version
    loaded.job_observed(at(31), JobObservation("4242", JobState.FAILED, 1, 0, "f", "sacct"))
    repo.save(loaded, version)
    assert repo.list_watched(PROJECT_A) == []
    assert repo.list_watched() == []


# ==================================================================== damaged records


@pytest.mark.parametrize("how", list(Damage), ids=[d.value for d in Damage])
def test_a_damaged_record_is_corrupt_record_on_get(
    run_repository_harness: RunRepositoryHarness, how: Damage
) -> None:
    repo = run_repository_harness.repo
    run = advance(new_run(), S.RUNNING)
    repo.add(run)
    run_repository_harness.damage(PROJECT_A, run.run_id, how)
    with pytest.raises(CorruptRecord):
        repo.get(PROJECT_A, run.run_id)


def test_a_run_with_thousands_of_events_is_stored_and_read_back(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    """A cluster that comes and goes for weeks: every outage is two events (DynamoDB: an item
    holds 400 KB; the record of this run is about 1 MB as text)."""
    repo = run_repository_harness.repo
    run = advance(new_run(), S.QUEUED)
    repo.add(run)
    version = run.version
    for i in range(2500):
        run.mark_stale(at(100 + 2 * i), f"the head node did not answer (outage {i:04d})")
        run.clear_stale(at(101 + 2 * i))
    repo.save(run, version)
    back = repo.get(PROJECT_A, run.run_id)
    assert back.version == run.version > 5000
    assert stored(repo, back) == facts(run)
    assert [w.run_id for w in repo.list_watched(PROJECT_A)] == [run.run_id]
    assert run.run_id in {r.run_id for r in repo.list_active(PROJECT_A)}
    listed = repo.list(PROJECT_A, None, None, 10)
    assert [r.run_id for r in listed.runs] == [run.run_id]


@pytest.mark.parametrize("how", list(Damage), ids=[d.value for d in Damage])
def test_a_damaged_active_record_is_still_listed_active_and_reported_when_read(
    run_repository_harness: RunRepositoryHarness, how: Damage
) -> None:
    """The active listing is a projection kept beside the record, never parsed from it: a
    damaged run stays in it (so a round reaches it, and reports it when it reads it whole)."""
    repo = run_repository_harness.repo
    runs = [advance(new_run(), S.QUEUED) for _ in range(3)]
    for run in runs:
        repo.add(run)
    run_repository_harness.damage(PROJECT_A, runs[1].run_id, how)
    listed = {r.run_id for r in repo.list_active(PROJECT_A)}
    assert listed == {r.run_id for r in runs}
    assert {r.run_id for r in runs} <= {r.run_id for r in repo.list_active()}
    with pytest.raises(CorruptRecord):
        repo.get(PROJECT_A, runs[1].run_id)


@pytest.mark.parametrize("how", list(Damage), ids=[d.value for d in Damage])
def test_saving_over_a_damaged_record_raises_only_domain_errors(
    run_repository_harness: RunRepositoryHarness, how: Damage
) -> None:
    """Either the save is refused with a domain error, or the good run replaces the damage;
    never a parser's exception escaping the port."""
    repo = run_repository_harness.repo
    run = advance(new_run(), S.QUEUED)
    repo.add(run)
    version = run.version
    run_repository_harness.damage(PROJECT_A, run.run_id, how)
    run.job_observed(at(20), JobObservation("4242", JobState.RUNNING, source="squeue"))
    try:
        repo.save(run, version)
    except DomainError:
        return
    except Exception as exc:  # the contract under test: nothing but domain errors
        pytest.fail(f"save over a {how.value} record raised {type(exc).__name__}: {exc}")
    assert stored(repo, run) == facts(run)


# ==================================================================== instances and processes


def _second_instance(harness: RunRepositoryHarness) -> RunRepository:
    """Another adapter instance on the harness's storage: its own connections or client.
    The fake's storage is its object's memory, so its "second instance" is that same object."""
    if isinstance(harness, SharedStorageHarness):
        return harness.reopen()
    return harness.repo


def _race_from_a_process(
    opener: Callable[[], RunRepository], run_id: str, rounds: int, barrier: Any, results: Any
) -> None:
    """One writer process (spawned): each round, load the run, wait until the other writer has
    loaded the same version, record a change and save it. Puts (round, outcome) per round."""
    repo = opener()
    for n in range(rounds):
        try:
            barrier.wait(timeout=60)  # the previous round is over for both writers
            mine = repo.get(PROJECT_A, run_id)
            version = mine.version
            mine.record_submit_attempt(at(10 + n))
            barrier.wait(timeout=60)  # both writers hold the same version
            repo.save(mine, version)
            outcome = "won"
        except Conflict:
            outcome = "conflict"
        except BaseException as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        results.put((n, outcome))


def _race_in_processes(
    opener: Callable[[], RunRepository], run_id: str, rounds: int
) -> dict[int, list[str]]:
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(2), spawn.Queue()
    writers = [
        spawn.Process(
            target=_race_from_a_process,
            args=(opener, run_id, rounds, barrier, results),
            daemon=True,
        )
        for _ in range(2)
    ]
    for writer in writers:
        writer.start()
    outcomes: dict[int, list[str]] = {n: [] for n in range(rounds)}
    try:
        for _ in range(2 * rounds):
            n, outcome = results.get(timeout=120)
            outcomes[n].append(outcome)
    finally:
        for writer in writers:
            writer.join(timeout=30)
            if writer.is_alive():
                writer.kill()
    assert [w.exitcode for w in writers] == [0, 0]
    return outcomes


def test_two_processes_racing_on_each_version_let_exactly_one_win(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    """Two writers in two processes, each with its own adapter instance on the same storage
    (spawned: they share nothing but the file or the table), race on each version of one run:
    in every round exactly one save goes through and the other is Conflict.

    The fake cannot be shared by processes (its runs live in one object's memory), so for it
    the two writers are threads on that object: the same assertions, but a weaker claim, and
    the only one the fake can honestly be held to."""
    repo = run_repository_harness.repo
    run = advance(new_run(), S.SUBMITTING)
    repo.add(run)
    rounds = 4
    if isinstance(run_repository_harness, SharedStorageHarness):
        outcomes = _race_in_processes(run_repository_harness.opener(), run.run_id, rounds)
    else:
        outcomes = {
            n: [
                "won" if o is True else "conflict" if isinstance(o, Conflict) else repr(o)
                for o in _race(repo, run.run_id, 2, at(10 + n))
            ]
            for n in range(rounds)
        }
    for n in range(rounds):
        assert sorted(outcomes[n]) == ["conflict", "won"], f"round {n}: {outcomes[n]}"
    final = repo.get(PROJECT_A, run.run_id)
    assert final.submit_attempts == rounds
    assert final.version == run.version + rounds


def _at_once(calls: list[Callable[[], object]]) -> list[BaseException | None]:
    """Run the calls in threads released together; what each raised (None: it returned)."""
    start = threading.Barrier(len(calls))
    raised: list[BaseException | None] = [None] * len(calls)

    def call(n: int) -> None:
        start.wait(timeout=10)
        try:
            calls[n]()
        except BaseException as exc:
            raised[n] = exc

    pool = [threading.Thread(target=call, args=(n,)) for n in range(len(calls))]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=30)
    return raised


def test_one_idempotency_key_added_through_two_instances_at_once_makes_one_run(
    run_repository_harness: RunRepositoryHarness,
) -> None:
    """Two adapter instances on the same storage (for the fake: its one object) add two runs
    with the same idempotency key at the same moment, ten times over: each time one run is
    stored, the other add is IdempotencyConflict and stores nothing, and both instances then
    find the stored run by the key (which is how a replayed request is answered)."""
    instances = (run_repository_harness.repo, _second_instance(run_repository_harness))
    keys = 10
    for n in range(keys):
        key = f"submit-race-{n}"
        runs = [new_run(key=key, minute=n) for _ in instances]
        raised = _at_once(
            [functools.partial(repo.add, run) for repo, run in zip(instances, runs, strict=True)]
        )
        winners = [run for run, exc in zip(runs, raised, strict=True) if exc is None]
        assert len(winners) == 1, f"key {n}: {raised}"
        assert [type(exc) for exc in raised if exc is not None] == [IdempotencyConflict]
        for repo in instances:
            found = repo.find_by_idempotency_key(PROJECT_A, key)
            assert found is not None
            assert facts(found) == facts(winners[0])
    listed = run_repository_harness.repo.list(PROJECT_A, limit=100).runs
    assert len(listed) == keys
    assert {r.header.idempotency_key for r in listed} == {f"submit-race-{n}" for n in range(keys)}
