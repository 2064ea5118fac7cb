"""Slurm job states as squeue and sacct print them, and what each means for a run."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obp_workflow.core.jobs import PHASE_OF, JobObservation, JobPhase, JobState, parse_exit_code

# The states of the contract (``docs/external-contracts.md`` section 5), as sacct prints them.
SLURM_STATE_NAMES = [
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "SUSPENDED",
    "REQUEUED",
    "RESIZING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
]

# squeue's compact codes (%t).
SHORT_CODES = {
    "BF": JobState.BOOT_FAIL,
    "CA": JobState.CANCELLED,
    "CD": JobState.COMPLETED,
    "CF": JobState.CONFIGURING,
    "CG": JobState.COMPLETING,
    "DL": JobState.DEADLINE,
    "F": JobState.FAILED,
    "NF": JobState.NODE_FAIL,
    "OOM": JobState.OUT_OF_MEMORY,
    "PD": JobState.PENDING,
    "PR": JobState.PREEMPTED,
    "R": JobState.RUNNING,
    "RQ": JobState.REQUEUED,
    "RS": JobState.RESIZING,
    "S": JobState.SUSPENDED,
    "TO": JobState.TIMEOUT,
}

FAILURE_STATES = [
    JobState.FAILED,
    JobState.TIMEOUT,
    JobState.NODE_FAIL,
    JobState.PREEMPTED,
    JobState.OUT_OF_MEMORY,
    JobState.BOOT_FAIL,
    JobState.DEADLINE,
]


@pytest.mark.parametrize("name", SLURM_STATE_NAMES)
def test_every_slurm_state_name_is_read(name: str) -> None:
    assert JobState.parse(name) is JobState[name]


@pytest.mark.parametrize(("code", "state"), SHORT_CODES.items(), ids=SHORT_CODES.keys())
def test_squeue_short_codes_are_read(code: str, state: JobState) -> None:
    assert JobState.parse(code) is state


@pytest.mark.parametrize(
    ("text", "state"),
    [
        ("CANCELLED by 1000", JobState.CANCELLED),
        ("CANCELLED by 0", JobState.CANCELLED),
        ("CANCELLED+", JobState.CANCELLED),
        ("COMPLETED+", JobState.COMPLETED),
        ("  RUNNING  ", JobState.RUNNING),
        ("running\n", JobState.RUNNING),
        ("Pending", JobState.PENDING),
        ("cd", JobState.COMPLETED),
        ("OUT_OF_MEMORY ", JobState.OUT_OF_MEMORY),
    ],
    ids=repr,
)
def test_states_are_read_as_sacct_and_squeue_decorate_them(text: str, state: JobState) -> None:
    assert JobState.parse(text) is state


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "garbage",
        "COMPLETEDX",
        "RUNNING_NOT",
        "12345",
        "slurm_load_jobs error: Invalid job id specified",
        "+",
    ],
    ids=repr,
)
def test_unreadable_text_is_unknown(text: str) -> None:
    assert JobState.parse(text) is JobState.UNKNOWN


@given(st.text())
def test_parse_never_fails(text: str) -> None:
    assert isinstance(JobState.parse(text), JobState)


def test_every_state_has_a_phase() -> None:
    assert set(PHASE_OF) == set(JobState)
    assert all(isinstance(phase, JobPhase) for phase in PHASE_OF.values())


@pytest.mark.parametrize("state", FAILURE_STATES, ids=lambda s: s.value)
def test_terminal_failure_states_fail_the_run(state: JobState) -> None:
    assert PHASE_OF[state] is JobPhase.FAILED


def test_no_other_state_is_a_failure() -> None:
    assert {s for s, phase in PHASE_OF.items() if phase is JobPhase.FAILED} == set(FAILURE_STATES)


def test_unknown_is_never_a_failure() -> None:
    assert PHASE_OF[JobState.UNKNOWN] is JobPhase.UNKNOWN
    assert JobObservation.unknown("42").phase is JobPhase.UNKNOWN


@pytest.mark.parametrize(
    ("state", "phase"),
    [
        (JobState.PENDING, JobPhase.WAITING),
        (JobState.CONFIGURING, JobPhase.WAITING),
        (JobState.REQUEUED, JobPhase.WAITING),
        (JobState.RESIZING, JobPhase.WAITING),
        (JobState.RUNNING, JobPhase.RUNNING),
        (JobState.COMPLETING, JobPhase.RUNNING),
        (JobState.SUSPENDED, JobPhase.RUNNING),
        (JobState.COMPLETED, JobPhase.SUCCEEDED),
        (JobState.CANCELLED, JobPhase.CANCELLED),
    ],
    ids=lambda v: v.value,
)
def test_non_failure_states_map_to_their_phase(state: JobState, phase: JobPhase) -> None:
    assert PHASE_OF[state] is phase


def test_a_failure_reason_says_what_happened_with_code_and_signal() -> None:
    obs = JobObservation("42", JobState.TIMEOUT, exit_code=0, signal=15)

    assert obs.failure_reason() == "the job reached its time limit (exit code 0, signal 15)"


def test_a_failure_reason_without_a_signal() -> None:
    obs = JobObservation("42", JobState.FAILED, exit_code=3, signal=0)

    assert obs.failure_reason() == "the job failed (exit code 3)"


# ---------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3:0", (3, 0)),
        ("0:15", (0, 15)),
        ("0:0", (0, 0)),
        ("137:9", (137, 9)),
        (" 1:0\n", (1, 0)),
        ("2", (2, 0)),
    ],
)
def test_exit_codes_are_read(text: str, expected: tuple[int, int]) -> None:
    assert parse_exit_code(text) == expected


@pytest.mark.parametrize("text", ["", ":", "garbage", "3:x", "x:3", "3:0:1", "None", "1.5:0"])
def test_unreadable_exit_codes_are_none(text: str) -> None:
    assert parse_exit_code(text) == (None, None)


@given(st.integers(0, 255), st.integers(0, 64))
def test_exit_code_round_trip(code: int, signal: int) -> None:
    assert parse_exit_code(f"{code}:{signal}") == (code, signal)


@given(st.text())
def test_parse_exit_code_never_fails(text: str) -> None:
    code, signal = parse_exit_code(text)

    assert (code is None) == (signal is None)
