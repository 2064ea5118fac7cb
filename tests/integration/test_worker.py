"""The workflow container's worker, with a real luigid: it drives runs to their end through
Luigi builds, picks up new runs and cancels, reconciles what it finds at start without
submitting anything twice, retires when idle without losing a run that arrives meanwhile, and
stops cleanly on SIGTERM.

The in-process tests run the worker in a thread over the in-memory family (so the test can
submit and look at the same adapters); the process tests run ``obp-workflow worker`` itself.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import httpx
import pytest

from obp_workflow.adapters.fake.clock import FakeClock
from obp_workflow.adapters.fake.cluster_gateway import FakeClusterGateway
from obp_workflow.adapters.fake.cluster_provisioner import (
    FakeClusterProvisioner,
    example_cluster,
)
from obp_workflow.adapters.fake.instance_orchestrator import FakeInstanceOrchestrator
from obp_workflow.application.requests import Requests
from obp_workflow.core.errors import ServiceUnavailable
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunState, SimulationRun
from obp_workflow.entrypoints.composition.root import Service, build
from obp_workflow.entrypoints.composition.settings import load_settings
from obp_workflow.entrypoints.worker import tasks
from obp_workflow.entrypoints.worker.process import Worker, WorkerConfig

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = ProjectRef.parse(VLAB, "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20")
ADA = Principal("subject-ada", "ada", parse_groups([f"/proj/{VLAB}/{PROJECT.project_id}/member"]))
REQUEST = SimulationRequest.parse({"command": ["run-sim"], "outputs": ["out/a.h5"]})
FAST = WorkerConfig(threads=4, poll=0.05, sweep=2.0, provisioning_poll=0.05, idle=0, luigid_port=0)


@dataclass
class World:
    container: Service
    cluster: FakeClusterGateway
    orchestrator: FakeInstanceOrchestrator

    @property
    def requests(self) -> Requests:
        requests: Requests = self.container.requests()
        return requests

    def submit(self, key: str | None = None) -> SimulationRun:
        return self.requests.submit(ADA, PROJECT, REQUEST, idempotency_key=key)

    def run(self, run_id: str) -> SimulationRun:
        return self.requests.get(ADA, PROJECT, run_id)

    def worker(self, config: WorkerConfig = FAST) -> Worker:
        return Worker(
            PROJECT,
            self.container.pipeline(),
            self.container.run_repository(),
            self.orchestrator,
            config,
        )

    def wait_for(
        self, run_id: str, done: Callable[[SimulationRun], bool], timeout: float = 30
    ) -> SimulationRun:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if done(run):
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} did not get there: {self.run(run_id).states()}")


def make_world(orchestrator: FakeInstanceOrchestrator | None = None, **cluster: bool) -> World:
    gateway = FakeClusterGateway(auto_progress=True)
    container = build(
        load_settings(),
        cluster_gateway=gateway,
        cluster_provisioner=FakeClusterProvisioner(
            ready_after=1, cluster_for=lambda p: example_cluster(p, **cluster)
        ),
        **({"instance_orchestrator": orchestrator} if orchestrator is not None else {}),
    )
    return World(container, gateway, container.instance_orchestrator())


@pytest.fixture
def world() -> World:
    return make_world()


@contextmanager
def running(worker: Worker) -> Iterator[Worker]:
    """The worker in a thread of the test, stopped (as SIGTERM does) at the end."""
    exit_codes: list[int] = []
    thread = threading.Thread(target=lambda: exit_codes.append(worker.run()), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
    assert not thread.is_alive(), "the worker did not stop"
    assert exit_codes == [0]


def test_the_worker_drives_a_new_run_to_done_through_luigi(world: World) -> None:
    with running(world.worker()) as worker:
        run = world.submit()
        done = world.wait_for(run.run_id, lambda r: r.terminal)

    assert done.state is RunState.DONE, done.failure_reason
    assert done.states() == [
        RunState.ACCEPTED,
        RunState.PROVISIONING,
        RunState.SUBMITTING,
        RunState.QUEUED,
        RunState.RUNNING,
        RunState.SYNCING,
        RunState.REGISTERING,
        RunState.DONE,
    ]
    assert worker.dispatcher.builds >= 3  # the steps ran in Luigi builds, not in the loop
    assert world.cluster.submitted_tags.count(run.header.tag) == 1


def test_luigids_visualiser_shows_each_step_of_the_run_over_http(world: World) -> None:
    """The builds talk to the scheduler in the process; luigid's server shows the same
    scheduler over HTTP (its RPC API, which the visualiser's pages read)."""
    with running(world.worker()) as worker:
        run = world.submit()
        world.wait_for(run.run_id, lambda r: r.terminal)
        answer = httpx.get(
            f"{worker.luigid.url}/api/task_list", params={"data": json.dumps({"status": "DONE"})}
        )
        page = httpx.get(f"{worker.luigid.url}/static/visualiser/index.html")

    assert answer.status_code == 200
    steps = {
        task["name"]
        for task in answer.json()["response"].values()
        if task["params"].get("run_id") == run.run_id
    }
    assert {"Provision", "Submit", "Sync", "Register", "RunPipeline"} <= steps
    assert page.status_code == 200
    assert "Luigi" in page.text


def test_a_sweep_lets_go_of_the_luigi_tasks_of_runs_built_before(world: World) -> None:
    """Luigi keeps every task it makes: a worker living for days would keep every run it
    ever built, unless its sweep lets them go."""
    with running(world.worker(replace(FAST, sweep=0.3))):
        run = world.submit()
        world.wait_for(run.run_id, lambda r: r.terminal)
        made = tasks.RunPipeline.of(PROJECT, run.run_id)
        assert tasks.RunPipeline.of(PROJECT, run.run_id) is made  # Luigi's cache, within a sweep
        deadline = time.monotonic() + 10
        while tasks.RunPipeline.of(PROJECT, run.run_id) is made:
            assert time.monotonic() < deadline, "no sweep let the run's tasks go"
            time.sleep(0.05)


@pytest.mark.parametrize("lustre", [True, False], ids=["lustre-hsm", "direct-upload"])
def test_several_runs_at_once_each_end_done_with_one_job(lustre: bool) -> None:
    world = make_world(lustre=lustre)
    with running(world.worker()):
        runs = [world.submit() for _ in range(6)]
        ended = [world.wait_for(r.run_id, lambda r: r.terminal) for r in runs]

    assert {r.state for r in ended} == {RunState.DONE}
    for run in runs:
        assert world.cluster.submitted_tags.count(run.header.tag) == 1


def test_a_cancel_reaches_the_cluster_through_the_worker(world: World) -> None:
    world.cluster.auto_progress = False  # the job stays queued until cancelled
    with running(world.worker()):
        run = world.submit()
        world.wait_for(run.run_id, lambda r: r.state is RunState.QUEUED)
        world.requests.cancel(ADA, PROJECT, run.run_id, "changed my mind")
        cancelled = world.wait_for(run.run_id, lambda r: r.terminal)

    assert cancelled.state is RunState.CANCELLED
    assert cancelled.job_id is not None
    assert world.cluster.jobs[cancelled.job_id].state.value == "CANCELLED"


def test_at_start_the_worker_takes_up_every_unfinished_run_and_submits_nothing_twice(
    world: World,
) -> None:
    waiting = world.submit()  # never seen by a worker
    submitted = world.submit()
    pipeline = world.container.pipeline()
    for _ in range(4):  # a worker got it as far as the scheduler, then died
        pipeline.advance(PROJECT, submitted.run_id)
    assert world.run(submitted.run_id).state is RunState.QUEUED

    with running(world.worker()):
        ended = [world.wait_for(r.run_id, lambda r: r.terminal) for r in (waiting, submitted)]

    assert [r.state for r in ended] == [RunState.DONE, RunState.DONE]
    for run in (waiting, submitted):
        assert world.cluster.submitted_tags.count(run.header.tag) == 1


def test_an_idle_worker_retires_and_stops_its_instance(world: World) -> None:
    world.orchestrator.ensure(PROJECT)  # the instance this worker is
    worker = world.worker(replace(FAST, idle=0.3))
    started = time.monotonic()

    assert worker.run() == 0  # returns by itself

    assert time.monotonic() - started < 15
    assert worker.retired
    instance = world.orchestrator.describe(PROJECT)
    assert instance is not None
    assert not instance.live


class SubmitWhileStopping(FakeInstanceOrchestrator):
    """A request that lands just as the worker retires: recorded after the worker's last look
    at its runs would have been, before its instance is gone."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.on_stop: Callable[[], None] = lambda: None

    def stop(self, project: ProjectRef, reason: str) -> None:
        super().stop(project, reason)
        self.on_stop()


def test_a_run_recorded_while_the_worker_retires_gets_a_new_instance() -> None:
    clock = FakeClock()
    orchestrator = SubmitWhileStopping(clock)
    world = make_world(orchestrator)
    orchestrator.ensure(PROJECT)
    recorded: list[SimulationRun] = []
    orchestrator.on_stop = lambda: recorded.append(world.submit())
    worker = world.worker(replace(FAST, idle=0.2))

    assert worker.run() == 0

    assert worker.retired
    assert len(recorded) == 1
    assert world.run(recorded[0].run_id).state is RunState.ACCEPTED  # waiting, not lost
    instance = orchestrator.describe(PROJECT)
    assert instance is not None
    assert instance.live  # a new instance will drive it
    assert orchestrator.starts == 2


ENVIRONMENT = {
    "OBP_ADAPTERS": "fake",
    "OBP_VIRTUAL_LAB_ID": PROJECT.virtual_lab_id,
    "OBP_PROJECT_ID": PROJECT.project_id,
    "OBP_LUIGID_PORT": "0",
    "OBP_WORKER_POLL_SECONDS": "0.1",
}


def worker_process(**extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
    return subprocess.Popen(
        [sys.executable, "-m", "obp_workflow.entrypoints.cli", "worker"],
        env={**env, **ENVIRONMENT, **extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_stops_the_worker_process_and_its_luigid_with_status_0() -> None:
    process = worker_process(OBP_WORKER_IDLE_MINUTES="0", OBP_LOG_LEVEL="INFO")
    try:
        line = json.loads(_wait_for_line(process, "luigid (visualiser) on "))
        assert line["level"] == "INFO"
        assert line["project"] == str(PROJECT)  # every line of the worker names its project
        port = int(line["message"].rsplit(":", 1)[1])
        assert _listening(port)
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert process.wait(25) == 0
        assert time.monotonic() - started < 25
        assert not _listening(port)  # luigid went with it
    finally:
        if process.poll() is None:
            process.kill()


def test_a_worker_whose_luigid_port_is_taken_says_so_in_one_line_and_exits_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = worker_process(OBP_LUIGID_PORT=str(port))
        try:
            assert process.wait(30) == 1
        finally:
            if process.poll() is None:
                process.kill()
        assert process.stderr is not None
        said = process.stderr.read()
    assert f"luigid cannot listen on 127.0.0.1:{port}" in said
    assert "Traceback" not in said


def test_the_worker_process_exits_by_itself_when_idle() -> None:
    process = worker_process(OBP_WORKER_IDLE_MINUTES="0.005")
    try:
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_a_worker_without_its_project_says_so_in_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
    out = subprocess.run(
        [sys.executable, "-m", "obp_workflow.entrypoints.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "OBP_VIRTUAL_LAB_ID and OBP_PROJECT_ID" in out.stderr
    assert "Traceback" not in out.stderr


def _wait_for_line(process: subprocess.Popen[str], marker: str, timeout: float = 30) -> str:
    assert process.stderr is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if marker in line:
            return line.strip()
    raise AssertionError(f"the worker never said {marker!r}: {''.join(seen)[-2000:]}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_a_step_that_could_not_move_its_run_is_tried_again_soon_not_at_the_next_sweep(
    world: World,
) -> None:
    """Registration waits for the job's accounting record, which slurmdbd writes a few seconds
    after the job ends: the step answers "not yet", and the worker tries again, backing off
    from half a second, long before its sweep (here 60 s)."""
    for _ in range(5):  # retried after 0.5, 1, 2 and 4 s: the run ends within 8 s
        world.cluster.faults.fail_next("accounting", ServiceUnavailable("record not complete"))
    with running(world.worker(replace(FAST, sweep=60))):
        run = world.submit()
        started = time.monotonic()
        done = world.wait_for(run.run_id, lambda r: r.terminal, timeout=20)

    assert done.state is RunState.DONE
    assert time.monotonic() - started < 15
    assert world.cluster.faults.calls["accounting"] >= 6


def test_a_killed_worker_process_leaves_nothing_listening_on_luigids_port() -> None:
    process = worker_process(OBP_WORKER_IDLE_MINUTES="0", OBP_LOG_LEVEL="INFO")
    try:
        line = json.loads(_wait_for_line(process, "luigid (visualiser) on "))
        port = int(line["message"].rsplit(":", 1)[1])
        assert _listening(port)
        process.kill()  # SIGKILL: no handler runs
        process.wait(10)
        deadline = time.monotonic() + 10
        while _listening(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _listening(port)  # luigid's server lived in the process, and went with it
    finally:
        if process.poll() is None:
            process.kill()
