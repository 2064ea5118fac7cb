"""``obp-workflow demo``: one simulation through the whole lifecycle, in one process."""

from __future__ import annotations

import sys
import time

from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import RunEvent
from obp_workflow.ports.system import EventPublisher

DEMO_VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
DEMO_PROJECT = "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20"

DEMO_REQUEST = {
    "kind": "simulation",
    "name": "Thalamocortical microcircuit, 1 s of biological time",
    "command": ["neurodamus", "--configFile=simulation_config.json", "--tstop", "1000"],
    "resources": {"nodes": 4, "tasks_per_node": 32, "time_limit_minutes": 120},
    "inputs": ["https://openbrainplatform.org/data/circuits/thalamocortical-v2"],
    "outputs": ["output/spikes.h5", "output/soma_reports.h5", "output/simulation.log"],
    "metadata": {"campaign": "demo"},
}


class PrintingPublisher(EventPublisher):
    """Prints each change of a run as one line: when, which state, why."""

    def __init__(self, out: object = None) -> None:
        self._out = out or sys.stdout
        self._t0 = time.monotonic()

    def publish(self, project: ProjectRef, run_id: str, event: RunEvent) -> None:
        elapsed = time.monotonic() - self._t0
        marker = "->" if event.is_transition else "  "
        print(
            f"[{elapsed:7.3f}s] {run_id[:8]} v{event.version:<2} {marker} "
            f"{event.to_state.value:<12} {event.reason}",
            file=self._out,  # type: ignore[arg-type]
            flush=True,
        )


def demo(lustre: bool = True, max_rounds: int = 50) -> int:
    """Build the service on fakes, submit one simulation, drive it to the end."""
    from obp_workflow.adapters.fake.cluster_provisioner import (
        FakeClusterProvisioner,
        example_cluster,
    )
    from obp_workflow.entrypoints.composition.logs import apply_log_level
    from obp_workflow.entrypoints.composition.root import build
    from obp_workflow.entrypoints.composition.settings import load_settings
    from obp_workflow.entrypoints.worker.driver import Driver

    project = ProjectRef.parse(DEMO_VLAB, DEMO_PROJECT)
    scientist = Principal(
        subject="f3a9c1e2-0000-4000-8000-000000000001",
        username="ada",
        memberships=parse_groups([f"/proj/{DEMO_VLAB}/{DEMO_PROJECT}/member"]),
    )
    provisioner = FakeClusterProvisioner(
        ready_after=2, cluster_for=lambda p: example_cluster(p, lustre=lustre)
    )
    settings = load_settings()
    apply_log_level(settings.log_level)
    container = build(
        settings, event_publisher=PrintingPublisher(), cluster_provisioner=provisioner
    )
    requests, pipeline = container.requests(), container.pipeline()

    storage = "Lustre FSx (HSM export to S3)" if lustre else "shared storage (direct upload)"
    print(f"obp-workflow demo: in-memory adapters, cluster with {storage}")
    print(f"project {project}, submitted by {scientist.username}\n")
    run = requests.submit(
        scientist, project, SimulationRequest.parse(DEMO_REQUEST), idempotency_key="demo-1"
    )
    run_id = run.run_id
    driver = Driver(pipeline, interval=0)
    driver.run(
        until=lambda: requests.get(scientist, project, run_id).terminal, max_rounds=max_rounds
    )
    run = requests.get(scientist, project, run_id)
    print()
    print(f"run {run.run_id}: {run.state.value} after {len(run.events)} events")
    print(f"  path:       {' -> '.join(s.value for s in run.states())}")
    print(f"  cluster:    {run.cluster_name}, job {run.job_id}")
    if run.sync_outcome:
        for f in run.sync_outcome.files:
            print(f"  output:     {f.relative_path} ({f.size} B) at {f.location}")
    if run.kg_activity_id:
        print(f"  provenance: {run.kg_activity_id}")
    links = getattr(container.knowledge_graph(), "links", {})
    if links:
        print(f"  files:      {len(links)} outputs linked as files of the graph (to their objects)")
    return 0 if run.state.value == "DONE" else 1
