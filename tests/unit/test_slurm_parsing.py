"""What the SSH adapter reads from squeue and sacct, and its pure helpers."""

from __future__ import annotations

import pytest

from obp_workflow.adapters.ssh.connection import Budget, load_private_key
from obp_workflow.adapters.ssh.slurm import parse_sacct_line, parse_squeue_line
from obp_workflow.core.cluster import SecretRef
from obp_workflow.core.errors import ClusterAccessDenied, InvalidRequest
from obp_workflow.core.jobs import (
    JobAccounting,
    JobPhase,
    JobState,
    parse_accounting_line,
    parse_controller_record,
)
from obp_workflow.core.jobspec import confined

EVERY_STATE = [s for s in JobState if s is not JobState.UNKNOWN]


@pytest.mark.parametrize("state", EVERY_STATE, ids=lambda s: s.value)
def test_every_squeue_state_is_read_with_its_exit_code_once_ended(state: JobState) -> None:
    line = f"4242|{state.value}|None|{3 << 8 | 9}|"
    obs = parse_squeue_line(line)
    assert obs is not None
    assert (obs.job_id, obs.state, obs.source) == ("4242", state, "squeue")
    assert obs.raw == line.strip()
    if obs.phase in (JobPhase.WAITING, JobPhase.RUNNING):
        assert (obs.exit_code, obs.signal) == (None, None)
    else:
        assert (obs.exit_code, obs.signal) == (3, 9)


@pytest.mark.parametrize(
    ("text", "state", "code", "signal"),
    [
        ("7|COMPLETED|0:0|obp-x|a|b|00:00:01", JobState.COMPLETED, 0, 0),
        ("7|FAILED|3:0|obp-x|a|b|00:00:01", JobState.FAILED, 3, 0),
        ("7|CANCELLED by 1000|0:15|obp-x|a|b|00:00:01", JobState.CANCELLED, 0, 15),
        ("7|TIMEOUT|0:15|obp-x|a|b|00:01:05", JobState.TIMEOUT, 0, 15),
        ("7|OUT_OF_MEMORY|0:125|obp-x|a|b|00:00:09", JobState.OUT_OF_MEMORY, 0, 125),
        ("7|NODE_FAIL|1:0|obp-x|a|b|00:00:09", JobState.NODE_FAIL, 1, 0),
        ("7|RUNNING|0:0|obp-x|a|Unknown|00:00:09", JobState.RUNNING, None, None),
    ],
)
def test_sacct_lines_give_state_exit_code_and_signal(
    text: str, state: JobState, code: int | None, signal: int | None
) -> None:
    obs = parse_sacct_line(text)
    assert obs is not None
    assert (obs.state, obs.exit_code, obs.signal, obs.source) == (state, code, signal, "sacct")


@pytest.mark.parametrize(
    "line", ["", "JOBID|STATE", "7.batch|COMPLETED|0:0", "7_1|RUNNING|0:0", "garbage"]
)
def test_lines_that_are_not_a_job_are_ignored(line: str) -> None:
    assert parse_sacct_line(line) is None
    assert parse_squeue_line(line) is None


def test_an_unreadable_state_is_unknown_never_failed() -> None:
    obs = parse_sacct_line("7|SPECIAL_EXIT|0:0|x")
    assert obs is not None
    assert obs.state is JobState.UNKNOWN
    assert obs.phase is JobPhase.UNKNOWN


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../b", "", "a//b", "./a", "a\x00b"])
def test_confined_refuses_paths_that_leave_the_run_folder(path: str) -> None:
    with pytest.raises(InvalidRequest):
        confined("/home/sim/runs/r1", path)


def test_confined_joins_a_plain_relative_path() -> None:
    assert confined("/home/sim/runs/r1", "out/a.h5") == "/home/sim/runs/r1/out/a.h5"


class Ticks:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_budget_gives_its_capacity_then_refills_with_time() -> None:
    clock = Ticks()
    budget = Budget(6, now=clock)
    assert [budget.take() for _ in range(7)] == [True] * 6 + [False]
    clock.t += 10  # 6 per minute: one token every 10 s
    assert budget.take()
    assert not budget.take()


def test_a_secret_that_is_not_a_key_is_refused_naming_the_reference_only() -> None:
    secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot really a key\n"
    with pytest.raises(ClusterAccessDenied) as refused:
        load_private_key(secret, SecretRef("arn:aws:secretsmanager:x:secret:cluster-user"))
    assert "cluster-user" in refused.value.message
    assert "not really" not in refused.value.message


# ==================================================================== accounting records


def test_an_accounting_line_gives_nodes_elapsed_and_exit_code() -> None:
    line = (
        "4242|COMPLETED|0:0|2|node-[01-02]|3725|2026-11-25T17:40:01|2026-11-25T18:42:06|"
        "obp-run-1|2026-11-25T17:39:58"
    )
    record = parse_accounting_line(line)
    assert record == JobAccounting(
        job_id="4242",
        state=JobState.COMPLETED,
        exit_code=0,
        signal=0,
        nodes=2,
        node_list="node-[01-02]",
        elapsed_seconds=3725,
        started="2026-11-25T17:40:01",
        ended="2026-11-25T18:42:06",
        name="obp-run-1",
        submitted="2026-11-25T17:39:58",
        raw=line,
    )


def test_an_accounting_line_of_a_job_that_never_ran_has_no_nodes_or_end() -> None:
    record = parse_accounting_line(
        "77|CANCELLED by 1001|0:0|1|None assigned|0|Unknown|Unknown|a|b|c|2026-11-25T17:39:58"
    )
    assert record is not None
    assert record.state is JobState.CANCELLED
    assert record.node_list == ""
    assert (record.started, record.ended) == (None, None)
    assert record.elapsed_seconds == 0
    assert record.name == "a|b|c"  # a job name may hold the separator; Submit never does
    assert record.submitted == "2026-11-25T17:39:58"


@pytest.mark.parametrize(
    "line",
    [
        "",
        "JobID|State",
        "4242|COMPLETED|0:0|1|n1|5|a|b|name-without-submit",
        "4242.batch|COMPLETED|0:0|1|n1|5|a|b|n|s",
        "x|COMPLETED|0:0|1|n1|5|a|b|n|s",
    ],
    ids=["empty", "short", "no-submit", "a-step", "not-an-id"],
)
def test_lines_that_are_not_an_accounting_record_are_none(line: str) -> None:
    assert parse_accounting_line(line) is None


CONTROLLER_LINE = (
    "JobId=5226 JobName=obp-run-0001 UserId=obpsim(1001) GroupId=obpsim(1001) Priority=1 "
    "JobState=FAILED Reason=NonZeroExitCode Dependency=(null) ExitCode=3:0 RunTime=1-02:03:04 "
    "TimeLimit=UNLIMITED SubmitTime=2026-12-06T17:43:29 StartTime=2026-12-06T17:43:30 "
    "EndTime=2026-12-07T19:46:34 Partition=debug NodeList=node-[1-2] BatchHost=node-1 NumNodes=2 "
    "NumCPUs=2 Command=(null) WorkDir=/home/obpsim dir StdOut=/home/obpsim/slurm-5226.out"
)


def test_the_controllers_record_of_an_ended_job_reads_as_its_accounting() -> None:
    record = parse_controller_record(CONTROLLER_LINE)
    assert record is not None
    assert (record.job_id, record.name, record.state) == ("5226", "obp-run-0001", JobState.FAILED)
    assert (record.exit_code, record.signal) == (3, 0)
    assert (record.nodes, record.node_list) == (2, "node-[1-2]")
    assert record.elapsed_seconds == 86400 + 2 * 3600 + 3 * 60 + 4
    assert (record.submitted, record.started, record.ended) == (
        "2026-12-06T17:43:29",
        "2026-12-06T17:43:30",
        "2026-12-07T19:46:34",
    )


@pytest.mark.parametrize(
    "text",
    [
        CONTROLLER_LINE.replace("JobState=FAILED", "JobState=RUNNING"),
        CONTROLLER_LINE.replace("JobState=FAILED", "JobState=COMPLETING"),
        CONTROLLER_LINE.replace("JobId=5226", "JobId=abc"),
        "",
        "slurm_load_jobs error: Invalid job id specified",
    ],
    ids=["running", "completing", "bad-id", "empty", "error"],
)
def test_a_record_of_a_job_not_ended_or_not_a_record_is_none(text: str) -> None:
    assert parse_controller_record(text) is None
