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
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from obp_workflow.core.identity import ProjectRef
from tests.integration.test_worker_end_to_end import (  # the module's peers and helpers
    OUTPUTS,
    World,
    world_fixture,  # noqa: F401  (the module's peers, as the fixture ``world``)
    writes,
)
from tests.stack import tagged_ids

Run = dict[str, Any]


def state_is(state: str) -> Callable[[Run], bool]:
    return lambda run: run["state"] == state


def submit_intent_recorded(run: Run) -> bool:
    """Inside Submit: the intent is saved, the job not yet recorded."""
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


def spawn(world: World, project: ProjectRef, name: str) -> subprocess.Popen[bytes]:
    """A worker process as ECS starts it (a short submission lease, so that a submission
    killed in flight is taken up again within the test)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
    environment = world.instance_environment(project) | {"OBP_SUBMIT_LEASE_SECONDS": "3"}
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

    with world.worker(project) as worker:
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
    activities = [e for e in resources if "WorkflowExecution" in e.types]
    assert len(activities) == 1
    assert len(resources) == 1 + len(OUTPUTS)
