"""The worker process SIGKILLed at each step boundary and inside steps, then started again:
every run still ends DONE, with exactly one simulation job and at most one sync job on the
cluster (accounting, by tag) and no duplicate resource in Nexus.

The same real processes and peers as ``test_worker_end_to_end.py`` (whose ``world`` this module
uses): the gateway on the aws family over moto, the worker process as ECS starts it, Slurm over
SSH with the ``lfs`` emulator, Nexus. A kill inside a step is placed by watching the run (the
intent of a submission recorded, the elevated sync job submitted) or by holding an outside
service (Nexus answers the activity's write slowly).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from obp_workflow.core.identity import ProjectRef
from tests.integration.test_worker_end_to_end import (  # the module's peers and helpers
    OUTPUTS,
    World,
    world_fixture,  # noqa: F401  (the module's peers, as the fixture ``world``)
    writes,
)
from tests.stack import stack, tagged_ids

Run = dict[str, Any]
#: A submission in flight is held (the stack's sbatch waits) this long when the worker dies...
SLOW_SBATCH_SECONDS = 2
#: ... and a new worker takes it up after this lease (the default is 120 s; it must outlast any
#: submission in flight, which the SSH command timeout bounds in a deployment).
LEASE = {"OBP_SUBMIT_LEASE_SECONDS": "8"}


def state_is(state: str) -> Callable[[Run], bool]:
    return lambda run: run["state"] == state


def submit_intent_recorded(run: Run) -> bool:
    """Inside Submit: the intent is saved, ``sbatch`` is in flight (held by the stack's sbatch
    for ``SLOW_SBATCH_SECONDS``), the job not yet recorded."""
    attempts = [e for e in run["timeline"] if e["reason"].startswith("submission attempt")]
    return bool(attempts) and run["job"]["job_id"] is None


def sync_job_on_the_scheduler(run: Run) -> bool:
    """Inside Sync: the elevated HSM job is submitted and not yet done."""
    return run["state"] == "SYNCING" and run["sync"]["job_id"] is not None


KILL_POINTS: dict[str, Callable[[Run], bool]] = {
    "at-provisioning": state_is("PROVISIONING"),
    "at-submitting": state_is("SUBMITTING"),
    "inside-submit": submit_intent_recorded,
    "at-queued-or-running": lambda run: run["state"] in ("QUEUED", "RUNNING"),
    "at-syncing": state_is("SYNCING"),
    "inside-sync": sync_job_on_the_scheduler,
    "inside-register": state_is("REGISTERING"),  # Nexus holds the activity's write
}


def slow_next_sbatch(seconds: float) -> None:
    """The stack's sbatch waits ``seconds`` before the next submission of the simulation user
    (its flag file, consumed by that call; ``scripts/stack/README.md``)."""
    user = stack().user("sim")
    flag = Path(stack().home("sim")) / ".obp-test-slow-sbatch"
    flag.write_text(str(seconds))
    shutil.chown(flag, user, user)


def spawn(world: World, project: ProjectRef, name: str) -> subprocess.Popen[bytes]:
    """A worker process as ECS starts it, with the short submission lease."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
    environment = world.instance_environment(project) | LEASE
    log = (world.logs / f"crash-{name}-{project.project_id}.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-m", "obp_workflow.entrypoints.cli", "worker"],
        env={**base, **environment},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )


def until(world: World, project: ProjectRef, run_id: str, done: Callable[[Run], bool]) -> Run:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        run = world.get(project, run_id)
        if done(run):
            return run
        if run["terminal"]:
            raise AssertionError(f"run {run_id} ended {run['state']} before the kill point")
        time.sleep(0.02)
    raise AssertionError(f"run {run_id} never reached the kill point: {world.get(project, run_id)}")


@pytest.mark.stack
@pytest.mark.parametrize("kill_point", list(KILL_POINTS), ids=list(KILL_POINTS))
def test_a_worker_killed_and_started_again_ends_the_run_once(world: World, kill_point: str) -> None:
    project = world.new_project(lustre=True)
    if kill_point == "inside-register":
        world.nexus.slow_next(delay=8, match=lambda method, path: method == "PUT")
    if kill_point == "inside-submit":
        slow_next_sbatch(SLOW_SBATCH_SECONDS)
    run_id = world.post(project, writes(OUTPUTS, seconds=1))["run_id"]
    tag = f"obp-{run_id}"
    world.tags.append(tag)

    first = spawn(world, project, "killed")
    try:
        until(world, project, run_id, KILL_POINTS[kill_point])
    finally:
        first.kill()  # SIGKILL: nothing of the worker's own runs
        first.wait(10)
    world.nexus.clear_faults()

    with world.worker(project, **LEASE) as worker:
        run = world.wait_for(worker, project, run_id, lambda r: r["terminal"], timeout=120)

    assert run["state"] == "DONE", run["failure_reason"]
    assert len(tagged_ids(tag)) == 1  # exactly one simulation job
    sync_jobs = set().union(*(tagged_ids(f"{tag}-sync-{attempt}") for attempt in (1, 2, 3)))
    assert len(sync_jobs) <= 1  # at most one elevated sync job
    # Nexus: the activity and one entity per output, each once.
    org, nexus_project = world.graph.project_for(project)
    resources = [
        e
        for e in world.nexus._entries.get((org, nexus_project), {}).values()
        if e.kind == "resource"
    ]
    activities = [e for e in resources if any(t.endswith("WorkflowExecution") for t in e.types)]
    assert len(activities) == 1
    assert len(resources) == 1 + len(OUTPUTS)


@pytest.mark.stack
def test_two_workers_of_one_project_by_mistake_submit_each_job_once(world: World) -> None:
    project = world.new_project(lustre=False)
    run_ids = [world.post(project, writes(OUTPUTS, seconds=1))["run_id"] for _ in range(6)]
    world.tags.extend(f"obp-{run_id}" for run_id in run_ids)

    second = spawn(world, project, "second")  # the same project's instance, started twice
    try:
        with world.worker(project, **LEASE) as worker:
            ended = [
                world.wait_for(worker, project, run_id, lambda r: r["terminal"], timeout=120)
                for run_id in run_ids
            ]
    finally:
        second.terminate()
        assert second.wait(30) == 0

    assert [run["state"] for run in ended] == ["DONE"] * len(run_ids)
    for run_id in run_ids:
        assert len(tagged_ids(f"obp-{run_id}")) == 1
