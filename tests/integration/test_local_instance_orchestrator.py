"""The process InstanceOrchestrator beyond the contract: the real worker as its instance (it
retires when idle and shows STOPPED; SIGTERM stops it with status 0), the environment and log
of an instance, processes racing to ensure one, a reused pid, a worker stopping its own
instance, a process deaf to SIGTERM, and no zombie left behind."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from obp_workflow.adapters.local.instance_orchestrator import (
    INSTANCES_FOLDER,
    LOG_FILE,
    STATE_FILE,
    ProcessInstanceOrchestrator,
)
from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.instances import InstanceInfo

PROJECT = ProjectRef.parse(
    "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10", "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20"
)
BASE = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
#: What a worker of the in-memory family needs (as tests/integration/test_worker.py runs one).
FAKE_WORKER = {
    **BASE,
    "OBP_ADAPTERS": "fake",
    "OBP_LUIGID_PORT": "0",
    "OBP_WORKER_POLL_SECONDS": "0.1",
    "OBP_LOG_LEVEL": "INFO",
}


@pytest.fixture
def made(tmp_path: Path) -> Iterator[Callable[..., ProcessInstanceOrchestrator]]:
    """Orchestrators over ``tmp_path``; every instance left is stopped at the end."""
    orchestrators: list[ProcessInstanceOrchestrator] = []

    def make(
        command: Sequence[str] | None = None, env: dict[str, str] | None = None, **kw: Any
    ) -> ProcessInstanceOrchestrator:
        extra: dict[str, Any] = {"command": command} if command is not None else {}
        orchestrator = ProcessInstanceOrchestrator(tmp_path, env or BASE, **extra, **kw)
        orchestrators.append(orchestrator)
        return orchestrator

    yield make
    for orchestrator in orchestrators:
        orchestrator.stop(PROJECT, "end of test")


def folder(home: Path) -> Path:
    return home / INSTANCES_FOLDER / PROJECT.virtual_lab_id / PROJECT.project_id


def record(home: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((folder(home) / STATE_FILE).read_text())
    return state


def wait_for(
    orchestrator: ProcessInstanceOrchestrator,
    done: Callable[[InstanceInfo], bool],
    timeout: float = 60,
) -> InstanceInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = orchestrator.describe(PROJECT)
        if info is not None and done(info):
            return info
        time.sleep(0.05)
    raise AssertionError(f"not reached in {timeout} s: {orchestrator.describe(PROJECT)}")


def reaped(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_worker_retires_when_idle_and_shows_stopped_then_ensure_starts_another(
    made: Callable[..., ProcessInstanceOrchestrator], tmp_path: Path
) -> None:
    orchestrator = made(env={**FAKE_WORKER, "OBP_WORKER_IDLE_MINUTES": "0.02"})
    first = orchestrator.ensure(PROJECT)
    assert first.status == "RUNNING"
    pid = record(tmp_path)["pid"]
    stopped = wait_for(orchestrator, lambda i: not i.live)
    assert stopped.status == "STOPPED"
    assert stopped.instance_id == first.instance_id
    assert stopped.stop_reason == "exited with status 0"
    assert reaped(pid)
    lines = [json.loads(line) for line in (folder(tmp_path) / LOG_FILE).read_text().splitlines()]
    assert any("retiring" in line["message"] for line in lines)
    assert {line["project"] for line in lines if "project" in line} == {str(PROJECT)}
    second = orchestrator.ensure(PROJECT)
    assert second.live
    assert second.instance_id != first.instance_id
    assert orchestrator.starts == 2


def test_sigterm_stops_the_worker_with_status_0_in_time(
    made: Callable[..., ProcessInstanceOrchestrator], tmp_path: Path
) -> None:
    orchestrator = made(env={**FAKE_WORKER, "OBP_WORKER_IDLE_MINUTES": "0"})
    started = orchestrator.ensure(PROJECT)
    log = folder(tmp_path) / LOG_FILE
    deadline = time.monotonic() + 60
    while "luigid (visualiser) on" not in log.read_text():  # the worker is up
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    pid = record(tmp_path)["pid"]
    began = time.monotonic()
    orchestrator.stop(PROJECT, "asked by an operator")
    assert time.monotonic() - began < 25
    stopped = orchestrator.describe(PROJECT)
    assert stopped == InstanceInfo(
        PROJECT, started.instance_id, "STOPPED", started.started_at, "asked by an operator"
    )
    assert reaped(pid)
    assert record(tmp_path)["ended"] == "exited with status 0"


def test_an_instance_gets_the_project_and_the_base_environment_and_a_private_log(
    made: Callable[..., ProcessInstanceOrchestrator], tmp_path: Path
) -> None:
    show = [
        sys.executable,
        "-c",
        "import json, os, sys; "
        "print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('OBP_')}), "
        "file=sys.stderr); print('to stdout')",
    ]
    orchestrator = made(show, env={"PATH": os.environ["PATH"], "OBP_LOG_LEVEL": "DEBUG"})
    for _ in range(2):
        orchestrator.ensure(PROJECT)
        assert wait_for(orchestrator, lambda i: not i.live).stop_reason == "exited with status 0"
    lines = (folder(tmp_path) / LOG_FILE).read_text().splitlines()
    assert lines.count("to stdout") == 2  # appended, both runs
    seen = [json.loads(line) for line in lines if line != "to stdout"]
    assert len(seen) == 2
    ports = set()
    for env in seen:
        # each start has a luigid port of its own, free when it was picked
        ports.add(int(env.pop("OBP_LUIGID_PORT")))
        assert env == {
            "OBP_LOG_LEVEL": "DEBUG",
            "OBP_VIRTUAL_LAB_ID": PROJECT.virtual_lab_id,
            "OBP_PROJECT_ID": PROJECT.project_id,
        }
    assert all(0 < port < 65536 for port in ports)
    assert stat.S_IMODE((folder(tmp_path) / LOG_FILE).stat().st_mode) == 0o600
    for level in (tmp_path / INSTANCES_FOLDER, folder(tmp_path).parent, folder(tmp_path)):
        assert stat.S_IMODE(level.stat().st_mode) == 0o700


def test_a_luigid_port_asked_for_is_kept(
    made: Callable[..., ProcessInstanceOrchestrator], tmp_path: Path
) -> None:
    show = [sys.executable, "-c", "import os, sys; print(os.environ['OBP_LUIGID_PORT'])"]
    orchestrator = made(show, env={"PATH": os.environ["PATH"], "OBP_LUIGID_PORT": "8123"})
    orchestrator.ensure(PROJECT)
    wait_for(orchestrator, lambda i: not i.live)
    assert (folder(tmp_path) / LOG_FILE).read_text().split() == ["8123"]


def test_an_instance_that_fails_shows_its_exit_status(
    made: Callable[..., ProcessInstanceOrchestrator],
) -> None:
    orchestrator = made([sys.executable, "-c", "raise SystemExit(3)"])
    orchestrator.ensure(PROJECT)
    assert wait_for(orchestrator, lambda i: not i.live).stop_reason == "exited with status 3"


def test_processes_racing_to_ensure_start_one_instance(
    made: Callable[..., ProcessInstanceOrchestrator], tmp_path: Path
) -> None:
    marks = tmp_path / "started"
    command = ["sh", "-c", 'echo "$$" >> "$1"; exec sleep 300', "sh", str(marks)]
    script = (
        "import json, pathlib, sys, time\n"
        "from obp_workflow.adapters.local.instance_orchestrator import "
        "ProcessInstanceOrchestrator\n"
        "from obp_workflow.core.identity import ProjectRef\n"
        "home, start, project, command = sys.argv[1], float(sys.argv[2]), sys.argv[3], "
        "json.loads(sys.argv[4])\n"
        "o = ProcessInstanceOrchestrator(pathlib.Path(home), {'PATH': '/usr/bin:/bin'}, "
        "command=command)\n"
        "while time.time() < start: pass\n"
        "print(o.ensure(ProjectRef.parse(*project.split('/'))).instance_id)\n"
    )
    start = str(time.time() + 2)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), start, str(PROJECT), json.dumps(command)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    ids = {racer.communicate(timeout=60)[0].strip() for racer in racers}
    assert all(racer.returncode == 0 for racer in racers)
    here = made(command)
    info = here.describe(PROJECT)
    assert info is not None
    assert info.live
    assert ids == {info.instance_id}
    deadline = time.monotonic() + 10
    while not marks.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a second start, had there been one, would have written by now
    assert marks.read_text().split() == [str(record(tmp_path)["pid"])]


def test_a_reused_pid_is_not_taken_for_the_instance(
    made: Callable[..., ProcessInstanceOrchestrator], tmp_path: Path
) -> None:
    orchestrator = made(["sleep", "300"])
    first = orchestrator.ensure(PROJECT)
    time.sleep(0.1)  # start times are in clock ticks (10 ms): the stranger starts later
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        orchestrator.stop(PROJECT, "gone")
        # The record now names a live process of someone else, with another start time.
        state = {**record(tmp_path), "pid": stranger.pid, "stop_reason": None, "ended": None}
        (folder(tmp_path) / STATE_FILE).write_text(json.dumps(state))
        described = orchestrator.describe(PROJECT)
        assert described is not None
        assert described.status == "STOPPED"
        assert described.stop_reason == "exited"
        orchestrator.stop(PROJECT, "must not reach the stranger")
        second = orchestrator.ensure(PROJECT)
        assert second.instance_id != first.instance_id
        assert stranger.poll() is None, "the stranger was signalled"
    finally:
        stranger.kill()
        stranger.wait()


def test_a_worker_stopping_its_own_instance_is_stopping_then_stopped(
    made: Callable[..., ProcessInstanceOrchestrator], tmp_path: Path
) -> None:
    # As a retiring worker does: stop its own instance, then exit (here once the test has
    # looked at it meanwhile).
    release = tmp_path / "release"
    retire = [
        sys.executable,
        "-c",
        "import os, pathlib, time\n"
        "from obp_workflow.adapters.local.instance_orchestrator import "
        "ProcessInstanceOrchestrator\n"
        "from obp_workflow.core.identity import ProjectRef\n"
        "o = ProcessInstanceOrchestrator(pathlib.Path(os.environ['HOME_UNDER_TEST']), {})\n"
        "time.sleep(1)\n"
        "o.stop(ProjectRef.parse(os.environ['OBP_VIRTUAL_LAB_ID'], os.environ['OBP_PROJECT_ID']),"
        " 'idle: no unfinished run')\n"
        "deadline = time.monotonic() + 30\n"
        "while not pathlib.Path(os.environ['RELEASE']).exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n",
    ]
    orchestrator = made(
        retire, env={**BASE, "HOME_UNDER_TEST": str(tmp_path), "RELEASE": str(release)}
    )
    first = orchestrator.ensure(PROJECT)
    stopping = wait_for(orchestrator, lambda i: i.status != "RUNNING", timeout=30)
    assert stopping.status == "STOPPING"
    assert not stopping.live
    assert stopping.stop_reason == "idle: no unfinished run"
    pid = record(tmp_path)["pid"]
    assert Path(f"/proc/{pid}").exists()  # still finishing: a new instance may start meanwhile
    release.touch()
    stopped = wait_for(orchestrator, lambda i: i.status == "STOPPED", timeout=30)
    assert stopped.instance_id == first.instance_id
    assert stopped.stop_reason == "idle: no unfinished run"
    assert record(tmp_path)["ended"] == "exited with status 0"


def test_a_process_deaf_to_sigterm_is_killed_after_the_stop_timeout(
    made: Callable[..., ProcessInstanceOrchestrator], tmp_path: Path
) -> None:
    ready = tmp_path / "deaf"
    deaf = ["sh", "-c", 'trap "" TERM; touch "$1"; exec sleep 300', "sh", str(ready)]
    orchestrator = made(deaf, stop_timeout=0.5)
    orchestrator.ensure(PROJECT)
    deadline = time.monotonic() + 30
    while not ready.exists():  # the trap is in place
        assert time.monotonic() < deadline
        time.sleep(0.05)
    began = time.monotonic()
    orchestrator.stop(PROJECT, "stop now")
    assert time.monotonic() - began < 5
    info = orchestrator.describe(PROJECT)
    assert info is not None
    assert (info.status, info.stop_reason) == ("STOPPED", "stop now")
    assert record(tmp_path)["ended"] == f"killed by signal 9 ({signal.SIGKILL.name})"


def test_no_zombie_is_left_by_instances_that_ended(
    made: Callable[..., ProcessInstanceOrchestrator], tmp_path: Path
) -> None:
    orchestrator = made(["true"])
    pids = []
    for _ in range(5):
        orchestrator.ensure(PROJECT)
        pids.append(record(tmp_path)["pid"])
        wait_for(orchestrator, lambda i: not i.live)
    assert all(reaped(pid) for pid in pids)
