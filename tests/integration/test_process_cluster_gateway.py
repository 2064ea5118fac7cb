"""The process scheduler beyond the contract: real processes on this machine, stopped at their
time limit, cancelled with their children, found again by another gateway after the first one's
process has exited, reported FAILED when their wrapper is killed, queued while slots are taken;
and the demo's example (``examples/lif-network``), run directly and as a run request's job."""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from obp_workflow.adapters.local.cluster_gateway import ProcessClusterGateway
from obp_workflow.adapters.local.job_script import parse_time_limit
from obp_workflow.adapters.local.scheduler_state import JobRecord, group_alive
from obp_workflow.core.errors import ClusterUnreachable, InvalidRequest, SubmissionRejected
from obp_workflow.core.jobs import JobObservation, JobState
from obp_workflow.core.jobspec import JOB_SCRIPT, LOG_FILE, JobSpec, build_job_spec
from obp_workflow.core.request import SimulationRequest
from tests.contract.harness import fresh_run_id, make_header
from tests.contract.harness_local import ProcessClusterGatewayHarness
from tests.stack import wait_until

LIVE = (JobState.PENDING, JobState.RUNNING)


@pytest.fixture
def machine() -> Iterator[ProcessClusterGatewayHarness]:
    harness = ProcessClusterGatewayHarness()
    try:
        yield harness
    finally:
        harness.close()  # cancels what is still live, waits for it, removes the folder


def batch_job(
    h: ProcessClusterGatewayHarness,
    body: str,
    *directives: str,
    files: dict[str, str] | None = None,
) -> JobSpec:
    """A batch script as ``build_job_spec`` writes them, with the directives and body given."""
    run_id = fresh_run_id("lp")
    folder = f"{h.cluster.runs_root}/{run_id}"
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name=obp-{run_id}",
        f"#SBATCH --output={folder}/{LOG_FILE}",
        "#SBATCH --open-mode=append",
        *(f"#SBATCH {d}" for d in directives or ("--time=5",)),
        "",
        "set -eu",
        body,
        "",
    ]
    return JobSpec(
        tag=f"obp-{run_id}",
        run_folder=folder,
        files={**(files or {}), JOB_SCRIPT: "\n".join(lines)},
    )


def observe(
    h: ProcessClusterGatewayHarness, job_id: str, gw: ProcessClusterGateway | None = None
) -> JobObservation:
    return (gw or h.process).poll(h.cluster, [job_id])[job_id]


def wait_for(
    h: ProcessClusterGatewayHarness,
    job_id: str,
    done: tuple[JobState, ...] | None = None,
    timeout: float = 30,
) -> JobObservation:
    wanted = done or tuple(s for s in JobState if s not in (*LIVE, JobState.UNKNOWN))
    wait_until(lambda: observe(h, job_id).state in wanted, timeout, f"job {job_id}", 0.05)
    return observe(h, job_id)


def record(h: ProcessClusterGatewayHarness, job_id: str) -> JobRecord:
    loaded = h.state.load(job_id)
    assert loaded is not None
    return loaded[0]


def alive(pid: int) -> bool:
    """A process that runs (a zombie waiting to be reaped has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_a_job_past_its_time_limit_is_stopped_as_timeout(
    machine: ProcessClusterGatewayHarness,
) -> None:
    h = machine
    spec = batch_job(h, "echo started; sleep 120; echo never", "--time=0:02")  # 2 seconds
    job_id = h.process.submit(h.cluster, spec)
    obs = wait_for(h, job_id, timeout=20)
    assert obs.state is JobState.TIMEOUT
    accounted = h.process.accounting(h.cluster, job_id, spec.tag)
    assert accounted is not None
    assert accounted.elapsed_seconds is not None
    assert 2 <= accounted.elapsed_seconds <= 6
    job = record(h, job_id)
    assert job.job_pgid is not None
    assert not group_alive(job.job_pgid)
    log = h.process.tail_log(h.cluster, spec.run_folder)
    assert "started" in log
    assert "never" not in log


def test_cancel_stops_the_whole_process_group_grandchildren_included(
    machine: ProcessClusterGatewayHarness,
) -> None:
    h = machine
    body = 'sleep 300 & echo $! > grandchild.pid; bash -c "sleep 300" & wait'
    spec = batch_job(h, body, "--time=10")
    job_id = h.process.submit(h.cluster, spec)
    pid_file = Path(spec.run_folder) / "grandchild.pid"
    wait_until(pid_file.exists, 20, "the job to start its grandchild")
    grandchild = int(pid_file.read_text())
    assert alive(grandchild)
    leader = record(h, job_id).job_pgid
    assert leader is not None
    assert group_alive(leader)
    h.process.cancel(h.cluster, job_id)
    obs = wait_for(h, job_id)
    assert obs.state is JobState.CANCELLED
    wait_until(lambda: not alive(grandchild), 10, "the grandchild to be gone")
    assert not group_alive(leader)
    h.process.cancel(h.cluster, job_id)  # again: nothing changes
    assert observe(h, job_id).state is JobState.CANCELLED


SUBMIT_AND_EXIT = """
import json, sys
from obp_workflow.adapters.local.cluster_gateway import ProcessClusterGateway
from obp_workflow.core.jobspec import JobSpec
from tests.contract.harness_local import local_cluster
spec = JobSpec(**json.loads(sys.argv[2]))
print(ProcessClusterGateway(slots=2).submit(local_cluster(sys.argv[1]), spec))
"""


def test_a_job_outlives_the_process_that_submitted_it_and_is_found_again(
    machine: ProcessClusterGatewayHarness,
) -> None:
    h = machine
    gate = h.gates / "restart"
    spec = batch_job(h, f"echo before; until [ -e {gate} ]; do sleep 0.05; done; echo after")
    argv = [sys.executable, "-c", SUBMIT_AND_EXIT, h.cluster.runs_root]
    fields = {"tag": spec.tag, "run_folder": spec.run_folder, "files": dict(spec.files)}
    done = subprocess.run([*argv, json.dumps(fields)], capture_output=True, text=True, check=True)
    job_id = done.stdout.strip()
    # The submitting service is gone; another one, new, finds the job by its tag and follows it.
    fresh = ProcessClusterGateway(slots=2)
    assert fresh.find_by_tag(h.cluster, spec.tag) == job_id
    wait_until(lambda: observe(h, job_id, fresh).state is JobState.RUNNING, 20, "the job to run")
    gate.touch()
    wait_until(lambda: observe(h, job_id, fresh).state is JobState.COMPLETED, 20, "the job's end")
    obs = observe(h, job_id, fresh)
    assert (obs.exit_code, obs.signal, obs.source) == (0, 0, "squeue")
    assert fresh.tail_log(h.cluster, spec.run_folder).splitlines() == ["before", "after"]


def test_a_job_whose_wrapper_was_killed_is_failed_and_its_processes_stopped(
    machine: ProcessClusterGatewayHarness,
) -> None:
    h = machine
    spec = batch_job(h, "sleep 300", "--time=10")
    job_id = h.process.submit(h.cluster, spec)
    wait_until(lambda: observe(h, job_id).state is JobState.RUNNING, 20, "the job to run")
    job = record(h, job_id)
    assert job.wrapper_pid is not None
    assert job.job_pgid is not None
    os.kill(job.wrapper_pid, signal.SIGKILL)
    wait_until(lambda: not alive(job.wrapper_pid or 0), 10, "the wrapper to die")
    obs = observe(h, job_id)
    assert obs.state is JobState.FAILED
    assert "wrapper" in obs.raw
    assert "killed, or the machine restarted" in obs.raw
    assert not group_alive(job.job_pgid)  # its sleep did not outlive it
    accounted = h.process.accounting(h.cluster, job_id, spec.tag)
    assert accounted is not None
    assert accounted.state is JobState.FAILED


def test_a_job_waits_pending_while_every_slot_is_taken(
    machine: ProcessClusterGatewayHarness,
) -> None:
    h = machine
    one_slot = ProcessClusterGateway(slots=1, kill_grace_seconds=1)
    gate = h.gates / "slot"
    first = one_slot.submit(h.cluster, batch_job(h, f"until [ -e {gate} ]; do sleep 0.05; done"))
    wait_until(lambda: observe(h, first).state is JobState.RUNNING, 20, "the first job to run")
    second_spec = batch_job(h, "echo second ran")
    second = one_slot.submit(h.cluster, second_spec)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        waiting = observe(h, second)
        assert waiting.state is JobState.PENDING
        time.sleep(0.1)
    assert "Resources" in observe(h, second).raw
    gate.touch()
    assert wait_for(h, first).state is JobState.COMPLETED
    assert wait_for(h, second).state is JobState.COMPLETED
    assert "second ran" in one_slot.tail_log(h.cluster, second_spec.run_folder)


def test_a_failed_job_has_its_exit_code_and_the_end_of_its_log(
    machine: ProcessClusterGatewayHarness,
) -> None:
    h = machine
    body = 'for i in $(seq 1 500); do echo "line $i"; done; echo "to stderr" >&2; exit 7'
    spec = batch_job(h, body)
    job_id = h.process.submit(h.cluster, spec)
    obs = wait_for(h, job_id)
    assert (obs.state, obs.exit_code, obs.signal) == (JobState.FAILED, 7, 0)
    assert "exit code 7" in obs.failure_reason()
    tail = h.process.tail_log(h.cluster, spec.run_folder, 40)
    assert tail.endswith("line 500\nto stderr\n")
    assert len(tail.encode()) <= 40
    accounted = h.process.accounting(h.cluster, job_id)
    assert accounted is not None
    assert (accounted.state, accounted.exit_code, accounted.nodes) == (JobState.FAILED, 7, 1)
    assert accounted.node_list == h.process.host


def test_the_job_sees_slurms_variables_and_none_of_the_services_environment(
    machine: ProcessClusterGatewayHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = machine
    monkeypatch.setenv("OBP_SERVICE_CLIENT_SECRET", "s3cr3t-never-in-a-job")
    spec = batch_job(h, "env > env.txt")
    job_id = h.process.submit(h.cluster, spec)
    assert wait_for(h, job_id).state is JobState.COMPLETED
    env = (Path(spec.run_folder) / "env.txt").read_text()
    assert "s3cr3t-never-in-a-job" not in env
    assert f"SLURM_JOB_ID={job_id}\n" in env
    assert f"SLURM_JOB_NAME={spec.tag}\n" in env


def test_no_zombie_is_left_in_the_submitting_process(
    machine: ProcessClusterGatewayHarness,
) -> None:
    h = machine
    ids = [h.process.submit(h.cluster, batch_job(h, "true")) for _ in range(5)]
    for job_id in ids:
        assert wait_for(h, job_id).state is JobState.COMPLETED
    mine = str(os.getpid())
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[1] == mine:
                children.append((entry, stat[0]))
    assert [c for c in children if c[1] == "Z"] == []


def test_jobs_submitted_at_once_from_threads_and_processes_get_distinct_increasing_ids(
    machine: ProcessClusterGatewayHarness,
) -> None:
    h = machine
    specs = [batch_job(h, "true") for _ in range(6)]
    ids: list[str] = []
    with ThreadPoolExecutor(3) as pool:
        ids += pool.map(lambda spec: h.process.submit(h.cluster, spec), specs)
        # Another gateway process submits meanwhile: the counter is shared through its lock.
        other = batch_job(h, "true")
        fields = {"tag": other.tag, "run_folder": other.run_folder, "files": dict(other.files)}
        argv = [sys.executable, "-c", SUBMIT_AND_EXIT, h.cluster.runs_root, json.dumps(fields)]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
    ids.append(done.stdout.strip())
    assert len(set(ids)) == 7
    assert all(job_id.isdigit() for job_id in ids)
    later = h.process.submit(h.cluster, batch_job(h, "true"))
    assert int(later) > max(map(int, ids))
    for job_id in [*ids, later]:
        assert wait_for(h, job_id).state is JobState.COMPLETED


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5", 300),
        ("0:02", 2),
        ("1:02:03", 3723),
        ("2-0", 172800),
        ("1-2:03", 93780),
        ("1-0:0:5", 86405),
        ("0", None),
        ("UNLIMITED", None),
        ("infinite", None),
    ],
)
def test_time_limits_are_read_in_every_form_slurm_accepts(text: str, seconds: int | None) -> None:
    assert parse_time_limit(text) == seconds


@pytest.mark.parametrize(
    "directive",
    ["--nodes=2", "-N 3", "--array=1-4", "--time=soon", "--output=/tmp/elsewhere.log"],
)
def test_a_job_one_machine_cannot_run_is_rejected_before_anything_is_written(
    machine: ProcessClusterGatewayHarness, directive: str
) -> None:
    h = machine
    spec = batch_job(h, "true", directive)
    with pytest.raises(SubmissionRejected):
        h.process.submit(h.cluster, spec)
    assert not Path(spec.run_folder).exists()
    assert h.process.find_by_tag(h.cluster, spec.tag) is None


def test_a_missing_runs_root_is_unreachable_never_created(
    machine: ProcessClusterGatewayHarness,
) -> None:
    h = machine
    h.set_reachable(False)
    with pytest.raises(ClusterUnreachable, match="runs folder"):
        h.process.submit(h.cluster, batch_job(h, "true"))
    assert not Path(h.cluster.runs_root).exists()
    h.set_reachable(True)


def test_outputs_are_never_read_through_a_symbolic_link_that_leaves_the_run_folder(
    machine: ProcessClusterGatewayHarness,
) -> None:
    h = machine
    secret = h.base / "outside.txt"
    secret.write_text("not yours")
    body = f"ln -s {secret} link.txt; mkdir real; echo mine > real/out.txt; ln -s {h.base} away"
    spec = batch_job(h, body)
    job_id = h.process.submit(h.cluster, spec)
    assert wait_for(h, job_id).state is JobState.COMPLETED
    listed = {f.path for f in h.process.list_outputs(h.cluster, spec.run_folder)}
    assert "real/out.txt" in listed
    assert "link.txt" not in listed
    with pytest.raises(InvalidRequest):
        list(h.process.fetch_output(h.cluster, spec.run_folder, "link.txt"))
    with pytest.raises(InvalidRequest):
        list(h.process.fetch_output(h.cluster, spec.run_folder, "away/outside.txt"))
    assert b"".join(h.process.fetch_output(h.cluster, spec.run_folder, "real/out.txt")) == (
        b"mine\n"
    )


# ==================================================================== the demo's example

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NETWORK = EXAMPLES / "lif-network" / "network.py"


def run_network(out: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(NETWORK), "--out", str(out), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def test_the_lif_network_writes_its_spikes_and_a_summary_that_agrees(tmp_path: Path) -> None:
    printed = run_network(tmp_path, "--duration-ms", "2000")
    lines = (tmp_path / "spikes.csv").read_text().splitlines()
    assert lines[0] == "neuron,time_ms"
    spikes = [(int(n), float(t)) for n, t in (line.split(",") for line in lines[1:])]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["neurons"] == 200
    assert summary["duration_ms"] == 2000
    assert summary["spikes"] == len(spikes) > 0
    assert summary["mean_rate_hz"] == pytest.approx(len(spikes) / 200 / 2.0, abs=1e-3)
    assert 1 < summary["mean_rate_hz"] < 100  # an active network, not a silent or runaway one
    assert all(0 <= n < 200 and 0 <= t < 2000 for n, t in spikes)
    assert [t for _, t in spikes] == sorted(t for _, t in spikes)
    assert len({n for n, _ in spikes}) > 100  # most neurons take part
    assert f"{len(spikes)} spikes" in printed


def test_the_lif_network_is_repeatable_by_its_seed(tmp_path: Path) -> None:
    runs = [tmp_path / name for name in ("a", "b", "c")]
    for out, seed in zip(runs, ("7", "7", "8"), strict=True):
        run_network(out, "--duration-ms", "300", "--seed", seed)
    same, other = ((r / "spikes.csv").read_bytes() for r in runs[1:])
    assert (runs[0] / "spikes.csv").read_bytes() == same != other


def test_the_example_request_runs_the_lif_network_on_the_process_scheduler(
    machine: ProcessClusterGatewayHarness,
) -> None:
    h = machine
    body = json.loads((EXAMPLES / "lif-network.json").read_text())
    generated = runpy.run_path(str(EXAMPLES / "lif-network" / "make_request.py"))["request"]()
    assert body == generated, "run examples/lif-network/make_request.py after editing network.py"
    request = SimulationRequest.parse(body)
    spec = build_job_spec(make_header(request=request), h.cluster)
    job_id = h.process.submit(h.cluster, spec)
    obs = wait_for(h, job_id, timeout=120)
    assert (obs.state, obs.exit_code) == (JobState.COMPLETED, 0), h.process.tail_log(
        h.cluster, spec.run_folder
    )
    listed = {f.path: f.size for f in h.process.list_outputs(h.cluster, spec.run_folder)}
    assert all(listed.get(out, 0) > 0 for out in request.outputs)
    summary = json.loads(
        b"".join(h.process.fetch_output(h.cluster, spec.run_folder, "summary.json"))
    )
    assert (summary["neurons"], summary["duration_ms"]) == (200, 10000)
    assert summary["spikes"] > 0
    assert "spikes in 10000 ms" in h.process.tail_log(h.cluster, spec.run_folder)
