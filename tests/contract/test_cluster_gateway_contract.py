"""The ClusterGateway contract: a Slurm cluster's scheduler and files, as the service needs them."""

from __future__ import annotations

import json
import posixpath
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from obp_workflow.core.errors import (
    ClusterUnreachable,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    SubmissionUnclear,
)
from obp_workflow.core.jobs import JobAccounting, JobObservation, JobPhase, JobState
from obp_workflow.core.jobspec import REQUEST_FILE, USER_SCRIPT
from tests.contract.harness import ClusterGatewayHarness, Ending, Job
from tests.stack import wait_until

OUTPUTS = ("spikes.dat", "reports/soma.h5", "reports/deep/v.bin")


def submit(h: ClusterGatewayHarness, job: Job) -> str:
    return h.gateway.submit(h.cluster, job.spec)


def observe(h: ClusterGatewayHarness, job_id: str) -> JobObservation:
    answer = h.gateway.poll(h.cluster, [job_id])
    assert list(answer) == [job_id]
    obs = answer[job_id]
    assert obs.job_id == job_id
    return obs


def fetch(h: ClusterGatewayHarness, job: Job, path: str) -> bytes:
    return b"".join(h.gateway.fetch_output(h.cluster, job.folder, path))


def finished(
    h: ClusterGatewayHarness, ending: Ending, outputs: tuple[str, ...] = ()
) -> tuple[Job, str]:
    job = h.job(ending, outputs=outputs)
    job_id = submit(h, job)
    h.let_finish(job_id)
    return job, job_id


# ==================================================================== submit and find


def test_submit_returns_an_id_that_find_by_tag_finds(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    job = h.job()
    job_id = submit(h, job)
    assert isinstance(job_id, str)
    assert job_id.strip() == job_id != ""
    assert h.gateway.find_by_tag(h.cluster, job.tag) == job_id
    assert h.gateway.find_by_tag(h.cluster, "obp-never-submitted-0000") is None
    assert h.jobs_tagged(job.tag) == 1


def test_each_submit_is_a_new_job_with_its_own_id(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    jobs = [h.job() for _ in range(3)]
    ids = [submit(h, job) for job in jobs]
    assert len(set(ids)) == 3
    assert [h.gateway.find_by_tag(h.cluster, job.tag) for job in jobs] == ids


def test_submit_writes_the_spec_files_into_the_run_folder(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    job = h.job(script="#!/bin/bash\necho from the user script\n")
    submit(h, job)
    assert set(job.spec.files) >= {job.spec.script, REQUEST_FILE, USER_SCRIPT}
    for name, content in job.spec.files.items():
        assert h.read_file(posixpath.join(job.folder, name)) == content.encode()


# ==================================================================== states


def test_a_job_goes_pending_then_running_then_completed_with_exit_code_0(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    job = h.job(Ending.COMPLETE, outputs=OUTPUTS)
    job_id = submit(h, job)
    pending = observe(h, job_id)
    assert pending.state is JobState.PENDING
    assert pending.phase is JobPhase.WAITING
    assert pending.exit_code is None
    h.let_start(job_id)
    running = observe(h, job_id)
    assert running.state is JobState.RUNNING
    assert running.exit_code is None
    h.let_finish(job_id)
    done = observe(h, job_id)
    assert done.state is JobState.COMPLETED
    assert done.phase is JobPhase.SUCCEEDED
    assert done.exit_code == 0
    assert done.source in ("squeue", "sacct")


def test_a_job_that_exits_3_is_failed_with_exit_code_3(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    _job, job_id = finished(h, Ending.FAIL_3)
    obs = observe(h, job_id)
    assert obs.state is JobState.FAILED
    assert obs.phase is JobPhase.FAILED
    assert obs.exit_code == 3
    assert "exit code 3" in obs.failure_reason()


def test_a_job_past_its_time_limit_is_timeout(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    job, job_id = finished(h, Ending.TIMEOUT)
    assert "--time=1" in job.spec.files[job.spec.script]
    obs = observe(h, job_id)
    assert obs.state is JobState.TIMEOUT
    assert obs.phase is JobPhase.FAILED


# ==================================================================== cancel


@pytest.mark.parametrize("started", [False, True], ids=["pending", "running"])
def test_cancel_makes_a_live_job_cancelled(
    cluster_gateway_harness: ClusterGatewayHarness, started: bool
) -> None:
    h = cluster_gateway_harness
    job = h.job(Ending.LONG)
    job_id = submit(h, job)
    if started:
        h.let_start(job_id)
    h.gateway.cancel(h.cluster, job_id)
    h.let_finish(job_id)
    obs = observe(h, job_id)
    assert obs.state is JobState.CANCELLED
    assert obs.phase is JobPhase.CANCELLED


def test_cancelling_twice_is_not_an_error(cluster_gateway_harness: ClusterGatewayHarness) -> None:
    h = cluster_gateway_harness
    job_id = submit(h, h.job(Ending.LONG))
    h.let_start(job_id)
    h.gateway.cancel(h.cluster, job_id)
    h.gateway.cancel(h.cluster, job_id)
    h.let_finish(job_id)
    h.gateway.cancel(h.cluster, job_id)
    assert observe(h, job_id).state is JobState.CANCELLED


@pytest.mark.parametrize("ending", [Ending.COMPLETE, Ending.FAIL_3], ids=["completed", "failed"])
def test_cancelling_a_finished_job_changes_nothing(
    cluster_gateway_harness: ClusterGatewayHarness, ending: Ending
) -> None:
    h = cluster_gateway_harness
    _job, job_id = finished(h, ending)
    before = observe(h, job_id)
    h.gateway.cancel(h.cluster, job_id)
    h.gateway.cancel(h.cluster, job_id)
    after = observe(h, job_id)
    assert (after.state, after.exit_code) == (before.state, before.exit_code)


# ==================================================================== poll


def test_one_poll_answers_for_every_id_and_unknown_ids_are_unknown(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    pending = submit(h, h.job(Ending.LONG))
    running = submit(h, h.job(Ending.LONG))
    h.let_start(running)
    _, failed = finished(h, Ending.FAIL_3)
    _, completed = finished(h, Ending.COMPLETE)
    unknown = ["987654321", "987654322"]
    asked = [pending, unknown[0], running, failed, completed, unknown[1]]
    answer = h.gateway.poll(h.cluster, asked)
    assert sorted(answer) == sorted(asked)
    assert {job_id: answer[job_id].job_id for job_id in asked} == {j: j for j in asked}
    states = {job_id: answer[job_id].state for job_id in asked}
    assert states == {
        pending: JobState.PENDING,
        running: JobState.RUNNING,
        failed: JobState.FAILED,
        completed: JobState.COMPLETED,
        unknown[0]: JobState.UNKNOWN,
        unknown[1]: JobState.UNKNOWN,
    }


# Above Slurm's default MaxJobId (67043328): no scheduler ever has these ids.
@pytest.mark.parametrize(
    "ids", [["987654321"], ["98765432", "98765433", "987654321"]], ids=["alone", "several"]
)
def test_an_id_the_scheduler_does_not_know_is_unknown_never_failed(
    cluster_gateway_harness: ClusterGatewayHarness, ids: list[str]
) -> None:
    h = cluster_gateway_harness
    answer = h.gateway.poll(h.cluster, ids)
    assert sorted(answer) == sorted(ids)
    for job_id in ids:
        assert answer[job_id].state is JobState.UNKNOWN
        assert answer[job_id].phase is JobPhase.UNKNOWN
        assert answer[job_id].exit_code is None


def test_polling_no_ids_answers_nothing(cluster_gateway_harness: ClusterGatewayHarness) -> None:
    h = cluster_gateway_harness
    assert dict(h.gateway.poll(h.cluster, [])) == {}


@pytest.mark.parametrize(
    ("ending", "state", "code"),
    [(Ending.COMPLETE, JobState.COMPLETED, 0), (Ending.FAIL_3, JobState.FAILED, 3)],
    ids=["completed", "failed-3"],
)
def test_a_purged_finished_job_still_resolves_from_accounting(
    cluster_gateway_harness: ClusterGatewayHarness, ending: Ending, state: JobState, code: int
) -> None:
    h = cluster_gateway_harness
    job, job_id = finished(h, ending)
    h.purge(job_id)
    obs = observe(h, job_id)
    assert obs.state is state
    assert obs.exit_code == code
    assert obs.source == "sacct"
    assert h.gateway.find_by_tag(h.cluster, job.tag) == job_id
    record = accounted(h, job_id, job.tag)  # accounting never forgets
    assert (record.state, record.exit_code, record.nodes) == (state, code, 1)


@pytest.mark.parametrize(
    ("ending", "state", "code"),
    [(Ending.COMPLETE, JobState.COMPLETED, 0), (Ending.FAIL_3, JobState.FAILED, 3)],
    ids=["completed", "failed-3"],
)
def test_accounting_records_a_finished_jobs_nodes_elapsed_time_and_exit_code(
    cluster_gateway_harness: ClusterGatewayHarness, ending: Ending, state: JobState, code: int
) -> None:
    h = cluster_gateway_harness
    job, job_id = finished(h, ending)
    record = accounted(h, job_id)
    again = h.gateway.accounting(h.cluster, job_id, job.tag)
    assert again is not None
    assert (again.job_id, again.name, again.state, again.exit_code, again.nodes) == (
        record.job_id,
        record.name,
        record.state,
        record.exit_code,
        record.nodes,
    )
    assert h.gateway.accounting(h.cluster, job_id, "obp-another-run-0000") is None
    assert record.job_id == job_id
    assert record.name == job.tag
    assert record.state is state
    assert (record.exit_code, record.signal) == (code, 0)
    assert record.nodes == 1  # what the request asked for
    assert record.node_list
    assert record.elapsed_seconds is not None
    assert record.elapsed_seconds >= 0


def test_a_job_that_just_ended_has_its_record_at_once(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    """A run's registration does not wait for the accounting database to catch up: the
    record of a job seen ended is there at once (Slurm: the controller's, until slurmdbd's
    arrives)."""
    h = cluster_gateway_harness
    job, job_id = finished(h, Ending.FAIL_3)
    wait_until(
        lambda: h.gateway.poll(h.cluster, [job_id])[job_id].phase is JobPhase.FAILED,
        30,
        f"job {job_id} seen failed",
        interval=0.1,
    )
    record = h.gateway.accounting(h.cluster, job_id, job.tag)
    assert record is not None
    assert (record.job_id, record.name, record.state) == (job_id, job.tag, JobState.FAILED)
    assert (record.exit_code, record.nodes) == (3, 1)
    assert record.elapsed_seconds is not None


def accounted(h: ClusterGatewayHarness, job_id: str, tag: str | None = None) -> JobAccounting:
    """The job's accounting record, once complete: until then the gateway says to ask again
    (ServiceUnavailable; Slurm's accounting holds a placeholder for a few seconds)."""
    found: list[JobAccounting | None] = []

    def complete() -> bool:
        try:
            found.append(h.gateway.accounting(h.cluster, job_id, tag))
        except ServiceUnavailable:
            return False
        return True

    wait_until(complete, 60, f"the accounting of job {job_id}", interval=0.5)
    assert found[-1] is not None, f"accounting does not know job {job_id}"
    return found[-1]


def test_accounting_of_a_job_nobody_submitted_is_none(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    assert h.gateway.accounting(h.cluster, "987654321") is None


# ==================================================================== lost reply, adoption


def test_a_lost_submit_reply_leaves_one_job_that_find_by_tag_adopts(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    job = h.job(Ending.COMPLETE, outputs=OUTPUTS)
    h.lose_next_submit_reply()
    with pytest.raises(SubmissionUnclear):
        submit(h, job)
    adopted = h.gateway.find_by_tag(h.cluster, job.tag)
    assert adopted is not None
    assert h.jobs_tagged(job.tag) == 1
    assert observe(h, adopted).state is JobState.PENDING
    h.let_finish(adopted)
    assert observe(h, adopted).state is JobState.COMPLETED
    assert h.gateway.find_by_tag(h.cluster, job.tag) == adopted
    assert h.jobs_tagged(job.tag) == 1
    # The fault was one reply: the next submit is an ordinary one.
    other = h.job()
    other_id = submit(h, other)
    assert h.gateway.find_by_tag(h.cluster, other.tag) == other_id != adopted


# ==================================================================== unreachable


CALLS: dict[str, Callable[[ClusterGatewayHarness, Job, str], Any]] = {
    "submit": lambda h, job, _id: h.gateway.submit(h.cluster, h.job().spec),
    "find_by_tag": lambda h, job, _id: h.gateway.find_by_tag(h.cluster, job.tag),
    "poll": lambda h, job, job_id: h.gateway.poll(h.cluster, [job_id, "987654321"]),
    "cancel": lambda h, job, job_id: h.gateway.cancel(h.cluster, job_id),
    "accounting": lambda h, job, job_id: h.gateway.accounting(h.cluster, job_id),
    "tail_log": lambda h, job, _id: h.gateway.tail_log(h.cluster, job.folder, 100),
    "list_outputs": lambda h, job, _id: h.gateway.list_outputs(h.cluster, job.folder),
    # A stream: the error may come with the first chunk, never as an empty stream.
    "fetch_output": lambda h, job, _id: list(
        h.gateway.fetch_output(h.cluster, job.folder, OUTPUTS[0])
    ),
}


@pytest.mark.parametrize("method", list(CALLS))
def test_an_unreachable_cluster_raises_cluster_unreachable_from_every_method(
    cluster_gateway_harness: ClusterGatewayHarness, method: str
) -> None:
    h = cluster_gateway_harness
    job, job_id = finished(h, Ending.COMPLETE, OUTPUTS)
    h.set_reachable(False)
    with pytest.raises(ClusterUnreachable):
        CALLS[method](h, job, job_id)
    h.set_reachable(True)
    assert observe(h, job_id).state is JobState.COMPLETED
    assert h.gateway.find_by_tag(h.cluster, job.tag) == job_id


def test_a_submit_to_an_unreachable_cluster_creates_no_job(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    job = h.job()
    h.set_reachable(False)
    with pytest.raises(ClusterUnreachable):
        submit(h, job)
    h.set_reachable(True)
    assert h.gateway.find_by_tag(h.cluster, job.tag) is None
    assert h.jobs_tagged(job.tag) == 0


# ==================================================================== log and outputs


LOG_TEXT = "".join(f"step {i}: Vm=-65 mV; état stable ✓ 🙂\n" for i in range(200))


@pytest.mark.parametrize("max_bytes", [0, 1, 2, 3, 4, 5, 7, 100, 1000, 1_000_000])
def test_tail_log_returns_the_end_of_the_log_in_at_most_max_bytes(
    cluster_gateway_harness: ClusterGatewayHarness, max_bytes: int
) -> None:
    h = cluster_gateway_harness
    job = h.job()
    submit(h, job)
    h.append_log(job.folder, LOG_TEXT)
    tail = h.gateway.tail_log(h.cluster, job.folder, max_bytes)
    size = len(tail.encode())
    assert size <= max_bytes
    assert LOG_TEXT.endswith(tail), "the tail is the log's own text (no replacement characters)"
    assert size > min(max_bytes, len(LOG_TEXT.encode())) - 4  # at most one partial character


def test_tail_log_of_a_run_without_a_log_is_empty(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    job = h.job()
    assert h.gateway.tail_log(h.cluster, job.folder) == ""


def test_list_outputs_lists_every_file_with_its_size(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    job, _job_id = finished(h, Ending.COMPLETE, OUTPUTS)
    listed = h.gateway.list_outputs(h.cluster, job.folder)
    paths = [f.path for f in listed]
    assert len(paths) == len(set(paths))
    assert set(paths) >= {*OUTPUTS, REQUEST_FILE, job.spec.script}
    for f in listed:
        assert not f.path.startswith("/")
        assert ".." not in f.path.split("/")
        assert f.size == len(h.read_file(posixpath.join(job.folder, f.path)) or b"")
    sizes = {f.path: f.size for f in listed}
    assert all(sizes[out] > 0 for out in OUTPUTS)


def test_list_outputs_stays_in_its_run_folder(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    mine, _ = finished(h, Ending.COMPLETE, ("mine.dat",))
    finished(h, Ending.COMPLETE, ("theirs.dat",))
    paths = {f.path for f in h.gateway.list_outputs(h.cluster, mine.folder)}
    assert "mine.dat" in paths
    assert "theirs.dat" not in paths


def test_fetch_output_streams_the_file_bytes(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    job, _ = finished(h, Ending.COMPLETE, OUTPUTS)
    for path in (*OUTPUTS, REQUEST_FILE):
        chunks = list(h.gateway.fetch_output(h.cluster, job.folder, path))
        assert all(isinstance(c, bytes) for c in chunks)
        assert b"".join(chunks) == h.read_file(posixpath.join(job.folder, path))


def test_outputs_fetched_from_many_threads_at_once_each_stream_their_own_bytes(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    """The worker's builds run in threads: several runs' outputs are read at once, over one
    connection to the cluster. None may hang, and none may get another's bytes."""
    h = cluster_gateway_harness
    job, _ = finished(h, Ending.COMPLETE, OUTPUTS)
    paths = [*OUTPUTS, REQUEST_FILE] * 6
    expected = {p: h.read_file(posixpath.join(job.folder, p)) for p in set(paths)}
    got: dict[int, bytes] = {}
    failed: list[BaseException] = []

    def fetch_one(n: int, path: str) -> None:
        try:
            got[n] = fetch(h, job, path)
        except BaseException as exc:  # reported below
            failed.append(exc)

    threads = [
        threading.Thread(target=fetch_one, args=(n, p), daemon=True) for n, p in enumerate(paths)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not [t for t in threads if t.is_alive()], "reading outputs from threads hung"
    assert not failed, failed
    assert got == {n: expected[p] for n, p in enumerate(paths)}


def test_fetch_output_of_a_missing_file_is_not_found(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    job, _ = finished(h, Ending.COMPLETE, OUTPUTS)
    with pytest.raises(NotFound):
        fetch(h, job, "never-written.dat")


HOSTILE_PATHS = [
    "../x",
    "/etc/passwd",
    "a/../../b",
    "",
    "..",
    "/",
    "reports/../../x",
    "spikes.dat/../../../etc/shadow",
    "../" + "run-00000001/spikes.dat",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_fetch_output_refuses_paths_that_leave_the_run_folder(
    cluster_gateway_harness: ClusterGatewayHarness, path: str
) -> None:
    h = cluster_gateway_harness
    job, _ = finished(h, Ending.COMPLETE, OUTPUTS)
    with pytest.raises(InvalidRequest):
        fetch(h, job, path)


# ==================================================================== hostile values


HOSTILE_COMMANDS = {
    "substitution": ["echo", "$(touch /tmp/obp-pwned)", "`id`", "${HOME}"],
    "quotes": ["echo", "it's", 'say "hi"', "a'b\"c\\d"],
    "newlines": ["echo", "line1\nline2", "#SBATCH --partition=admin\n"],
    "operators": ["echo", "; rm -rf /", "&& reboot", "| nc evil 1", "> /etc/passwd"],
    "unicode": ["echo", "naïve ✓ 🙂", "\t tab"],
}
HOSTILE_NAMES = {
    "substitution": "$(reboot)",
    "quotes": 'it\'s "quoted"',
    "newlines": "first second #SBATCH --account=stolen",  # a newline itself is refused
    "operators": "; rm -rf / #",
    "unicode": "étude 🙂",
}


@pytest.mark.parametrize("kind", list(HOSTILE_COMMANDS))
def test_hostile_names_and_commands_submit_and_are_stored_verbatim(
    cluster_gateway_harness: ClusterGatewayHarness, kind: str
) -> None:
    h = cluster_gateway_harness
    job = h.job(command=HOSTILE_COMMANDS[kind], name=HOSTILE_NAMES[kind])
    job_id = submit(h, job)
    assert h.gateway.find_by_tag(h.cluster, job.tag) == job_id
    stored = h.read_file(posixpath.join(job.folder, REQUEST_FILE))
    assert stored == job.spec.files[REQUEST_FILE].encode()
    request = json.loads(stored or b"{}")["request"]
    assert request["command"] == HOSTILE_COMMANDS[kind]
    assert request["name"] == HOSTILE_NAMES[kind]
    script = h.read_file(job.spec.script_path)
    assert script == job.spec.files[job.spec.script].encode()
    h.let_finish(job_id)
    assert observe(h, job_id).state is JobState.COMPLETED


def test_a_hostile_user_script_is_stored_verbatim(
    cluster_gateway_harness: ClusterGatewayHarness,
) -> None:
    h = cluster_gateway_harness
    body = "#!/bin/bash\necho \"$(id)\" '`x`' ; echo done\nexit 0\n"
    job = h.job(script=body, name="$(reboot)")
    job_id = submit(h, job)
    assert h.read_file(posixpath.join(job.folder, USER_SCRIPT)) == body.encode()
    assert h.gateway.find_by_tag(h.cluster, job.tag) == job_id
