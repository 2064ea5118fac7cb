"""Stored runs: written and read back unchanged; anything damaged is a CorruptRecord."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obp_workflow.core.errors import CorruptRecord
from obp_workflow.core.jobs import JobObservation, JobState
from obp_workflow.core.records import SCHEMA_VERSION, dumps, loads, run_from_record, run_to_record
from obp_workflow.core.run import RunState, SimulationRun
from obp_workflow.core.sync import SyncedFile, SyncOutcome

from .factories import RUN_ID, at, header, request


def observe(job_id: str, state: JobState, **kw: Any) -> JobObservation:
    return JobObservation(job_id, state, raw=f"{job_id}|{state.value}", source="sacct", **kw)


def accepted() -> SimulationRun:
    return SimulationRun.accept(header(request(outputs=["out/spikes.h5"], metadata={"k": 1})))


def provisioning() -> SimulationRun:
    run = accepted()
    run.start_provisioning(at(1))
    return run


def submitting() -> SimulationRun:
    run = provisioning()
    run.cluster_ready(at(20), "pcluster-0a1b2c3d")
    run.record_submit_attempt(at(21))
    return run


def queued() -> SimulationRun:
    run = submitting()
    run.job_submitted(at(22), "4242")
    return run


def adopted_after_two_attempts() -> SimulationRun:
    run = submitting()
    run.record_submit_attempt(at(23))
    run.job_submitted(at(24), "4243", adopted=True)
    return run


def running_and_stale() -> SimulationRun:
    run = queued()
    run.job_observed(at(30), observe("4242", JobState.RUNNING))
    run.job_observed(at(31), JobObservation.unknown("4242"))
    return run


def running_recovered() -> SimulationRun:
    run = running_and_stale()
    run.job_observed(at(35), observe("4242", JobState.RUNNING, exit_code=0, signal=0))
    return run


def failed_on_timeout() -> SimulationRun:
    run = running_recovered()
    run.job_observed(at(90), observe("4242", JobState.TIMEOUT, exit_code=0, signal=15))
    return run


def syncing_after_a_failed_attempt() -> SimulationRun:
    run = running_recovered()
    run.job_observed(at(40), observe("4242", JobState.COMPLETED, exit_code=0))
    run.sync_planned(at(41), "lustre-hsm", 1)
    run.sync_job_started(at(42), "5000")
    run.sync_job_observed(at(43), observe("5000", JobState.NODE_FAIL, exit_code=1, signal=0))
    run.sync_job_started(at(44), "5001")
    return run


def done() -> SimulationRun:
    run = syncing_after_a_failed_attempt()
    run.sync_job_observed(at(50), observe("5001", JobState.COMPLETED, exit_code=0))
    outcome = SyncOutcome(
        "lustre-hsm",
        (SyncedFile("out/spikes.h5", 1234, "s3://bucket/p/out/spikes.h5", "sha256:ab"),),
    )
    run.sync_confirmed(at(51), outcome)
    run.registered(at(52), "https://kg/activity/1", ["https://kg/entity/1", "https://kg/e/2"])
    return run


def cancelled_while_running() -> SimulationRun:
    run = running_recovered()
    run.request_cancel(at(60), "alice", "no longer needed")
    run.job_observed(at(61), observe("4242", JobState.RUNNING))
    run.job_observed(at(62), observe("4242", JobState.CANCELLED))
    return run


def cancelled_before_the_cluster() -> SimulationRun:
    run = provisioning()
    run.request_cancel(at(2), "bob")
    return run


def failed_while_provisioning() -> SimulationRun:
    run = provisioning()
    run.fail(at(5), "the cluster could not be created: CREATE_FAILED")
    return run


SCENARIOS: dict[str, Callable[[], SimulationRun]] = {
    f.__name__: f
    for f in [
        accepted,
        provisioning,
        submitting,
        queued,
        adopted_after_two_attempts,
        running_and_stale,
        running_recovered,
        failed_on_timeout,
        syncing_after_a_failed_attempt,
        done,
        cancelled_while_running,
        cancelled_before_the_cluster,
        failed_while_provisioning,
    ]
}


def test_the_scenarios_reach_the_states_they_are_named_after() -> None:
    """Guards the fixtures themselves: a run that never moved would round-trip trivially."""
    reached = {name: make().state for name, make in SCENARIOS.items()}

    assert reached["done"] is RunState.DONE
    assert reached["failed_on_timeout"] is RunState.FAILED
    assert reached["cancelled_while_running"] is RunState.CANCELLED
    assert reached["syncing_after_a_failed_attempt"] is RunState.SYNCING
    assert SCENARIOS["running_and_stale"]().stale
    assert SCENARIOS["adopted_after_two_attempts"]().job_adopted


@pytest.mark.parametrize("make", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_a_run_reads_back_as_it_was_written(make: Callable[[], SimulationRun]) -> None:
    run = make()

    text = dumps(run)
    back = loads(text)

    assert vars(back) == vars(run)
    assert dumps(back) == text


@pytest.mark.parametrize("make", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_a_record_is_plain_json_and_reads_back(make: Callable[[], SimulationRun]) -> None:
    run = make()
    record = run_to_record(run)

    assert json.loads(json.dumps(record)) == record
    assert record["schema"] == SCHEMA_VERSION
    assert record["request_digest"] == run.header.request.digest()
    assert vars(run_from_record(record)) == vars(run)


def test_loads_accepts_bytes() -> None:
    run = done()

    assert vars(loads(dumps(run).encode())) == vars(run)


# ---------------------------------------------------------------------------- damage


def good_record() -> dict[str, Any]:
    """A run with several kinds of events: transitions, notes, a stale mark and its recovery."""
    return run_to_record(running_recovered())


def corrupt(record: object) -> CorruptRecord:
    """``record`` must be refused as a CorruptRecord, with a message for a person."""
    with pytest.raises(CorruptRecord) as caught:
        run_from_record(record)
    message = caught.value.message
    assert message
    assert len(message) < 600
    return caught.value


@pytest.mark.parametrize("schema", [2, 0, "1", None, 1.5])
def test_an_unknown_schema_version_is_refused(schema: object) -> None:
    record = good_record()
    record["schema"] = schema

    error = corrupt(record)

    assert "schema" in error.message
    assert RUN_ID in error.message


def test_a_record_without_a_schema_is_refused() -> None:
    record = good_record()
    del record["schema"]

    assert "schema" in corrupt(record).message


REQUIRED_FIELDS = [
    "run_id",
    "virtual_lab_id",
    "project_id",
    "requested_by",
    "request",
    "created_at",
    "state",
    "version",
    "events",
]


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_a_record_missing_a_field_is_refused(field: str) -> None:
    record = good_record()
    del record[field]

    corrupt(record)


@pytest.mark.parametrize(
    "path",
    [
        ("requested_by", "subject"),
        ("requested_by", "username"),
        ("events", 0, "v"),
        ("events", 1, "at"),
        ("events", 1, "to"),
        ("events", 1, "from"),
        ("events", 2, "data"),
        ("events", 2, "reason"),
        ("events", 2, "kind"),
    ],
    ids=lambda p: ".".join(map(str, p)),
)
def test_a_record_missing_a_nested_field_is_refused(path: tuple[str | int, ...]) -> None:
    record = good_record()
    container: Any = record
    for key in path[:-1]:
        container = container[key]
    del container[path[-1]]

    error = corrupt(record)

    assert RUN_ID in error.message


def _set(record: dict[str, Any], path: tuple[str | int, ...], value: object) -> None:
    container: Any = record
    for key in path[:-1]:
        container = container[key]
    container[path[-1]] = value


WRONG_VALUES: list[tuple[tuple[str | int, ...], object]] = [
    (("events",), "not a list"),
    (("events",), 5),
    (("events",), {"v": 1}),
    (("events",), []),
    (("events", 1), "an event"),
    (("events", 1, "data"), ["cluster", "x"]),
    (("events", 1, "at"), "yesterday"),
    (("events", 1, "at"), 1714564800),
    (("events", 1, "to"), "SLEEPING"),
    (("events", 1, "v"), "two"),
    (("events", 1, "v"), None),
    (("requested_by",), "alice"),
    (("request",), {"command": []}),
    (("request",), {"command": ["x"], "script": "y"}),
    (("request",), "neurodamus"),
    (("created_at",), "2024-13-45"),
    (("virtual_lab_id",), "not-a-uuid"),
    (("project_id",), 42),
    (("version",), "3"),
]


@pytest.mark.parametrize(
    ("path", "value"), WRONG_VALUES, ids=[f"{'.'.join(map(str, p))}={v!r}" for p, v in WRONG_VALUES]
)
def test_a_record_with_a_wrong_value_is_refused(path: tuple[str | int, ...], value: object) -> None:
    record = good_record()
    _set(record, path, value)

    corrupt(record)


# ---------------------------------------------------------------------------- tampered events


def test_an_illegal_move_is_refused() -> None:
    record = good_record()
    record["events"][2]["to"] = "DONE"  # PROVISIONING -> DONE is not a move of the lifecycle

    assert "not a legal move" in corrupt(record).message


def test_an_event_claiming_the_wrong_origin_is_refused() -> None:
    record = good_record()
    record["events"][2]["from"] = "RUNNING"

    assert "not a legal move" in corrupt(record).message


def test_a_later_event_claiming_to_be_first_is_refused() -> None:
    record = good_record()
    record["events"][1]["from"] = None

    corrupt(record)


def test_a_version_gap_is_refused() -> None:
    record = good_record()
    for event in record["events"][2:]:
        event["v"] += 1
    record["version"] += 1

    assert "follows version" in corrupt(record).message


def test_a_removed_event_is_refused() -> None:
    record = good_record()
    del record["events"][3]

    corrupt(record)


def test_a_duplicated_event_is_refused() -> None:
    record = good_record()
    record["events"].insert(2, copy.deepcopy(record["events"][2]))

    corrupt(record)


def test_an_unknown_fact_is_refused() -> None:
    record = good_record()
    record["events"][2]["data"]["is_admin"] = "1"

    assert "unknown fact" in corrupt(record).message


@pytest.mark.parametrize(
    ("fact", "value"),
    [("submit_attempts", "many"), ("exit_code", "x"), ("sync_outcome", "{"), ("kg_entities", "5")],
)
def test_an_unreadable_fact_is_refused(fact: str, value: str) -> None:
    record = good_record()
    record["events"][2]["data"][fact] = value

    corrupt(record)


@pytest.mark.parametrize(
    ("field", "value"), [("state", "DONE"), ("version", 99), ("version", 1), ("state", "queued")]
)
def test_a_state_disagreeing_with_the_events_is_refused(field: str, value: object) -> None:
    record = good_record()
    record[field] = value

    assert "disagrees" in corrupt(record).message


# ---------------------------------------------------------------------------- not even JSON


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "not json",
        "null",
        "[]",
        "42",
        '"a string"',
        b"\xff\xfe\x00",
        "{'single': 'quotes'}",
        "[" * 100_000,
    ],
    ids=lambda t: repr(t)[:30],
)
def test_loads_refuses_anything_but_a_stored_run(text: str | bytes) -> None:
    with pytest.raises(CorruptRecord):
        loads(text)


def test_a_record_text_with_an_infinite_event_version_is_refused() -> None:
    text = dumps(running_recovered()).replace('"v":2}', '"v":1e400}', 1)
    assert '"v":1e400' in text

    with pytest.raises(CorruptRecord):
        loads(text)


def _key_paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a JSON value (objects and arrays alike)."""
    paths: list[tuple[Any, ...]] = []
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else []
    )
    for key, child in items:
        paths.append((*prefix, key))
        paths.extend(_key_paths(child, (*prefix, key)))
    return paths


# Infinite numbers (JSON's 1e400) are the subject of their own test above.
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=5,
)
_GOOD = good_record()
_PATHS = _key_paths(_GOOD)


@given(st.sampled_from(_PATHS), st.one_of(st.just("delete"), JSON_VALUES))
def test_any_damage_is_a_corrupt_record_or_a_readable_run(
    path: tuple[Any, ...], replacement: object
) -> None:
    """Whatever one field becomes, reading raises CorruptRecord or gives a run: nothing else."""
    record = copy.deepcopy(_GOOD)
    container: Any = record
    for key in path[:-1]:
        container = container[key]
    if replacement == "delete":
        del container[path[-1]]
    else:
        container[path[-1]] = replacement

    try:
        run = run_from_record(record)
    except CorruptRecord:
        return
    assert run.version == len(run.events)
