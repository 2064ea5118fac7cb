"""The command line: ``obp-workflow demo`` runs a whole simulation lifecycle in one process."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

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


def demo(lustre: bool = True, max_sweeps: int = 50) -> int:
    """Build the service on fakes, submit one simulation, drive it to the end."""
    from obp_workflow.adapters.fake.provisioner import FakeProvisioner, example_cluster
    from obp_workflow.entrypoints.bootstrap import build
    from obp_workflow.entrypoints.settings import load_settings

    project = ProjectRef.parse(DEMO_VLAB, DEMO_PROJECT)
    scientist = Principal(
        subject="f3a9c1e2-0000-4000-8000-000000000001",
        username="ada",
        memberships=parse_groups([f"/proj/{DEMO_VLAB}/{DEMO_PROJECT}/member"]),
    )
    provisioner = FakeProvisioner(
        ready_after=2, cluster_for=lambda p: example_cluster(p, lustre=lustre)
    )
    container = build(load_settings(), events=PrintingPublisher(), provisioner=provisioner)
    service = container.workflow()

    storage = "Lustre FSx (HSM export to S3)" if lustre else "shared storage (direct upload)"
    print(f"obp-workflow demo: in-memory adapters, cluster with {storage}")
    print(f"project {project}, submitted by {scientist.username}\n")
    run = service.submit(
        scientist, project, SimulationRequest.parse(DEMO_REQUEST), idempotency_key="demo-1"
    )
    for _ in range(max_sweeps):
        run = service.runs.get(project, run.run_id)
        if run.terminal:
            break
        service.sweep()
    run = service.runs.get(project, run.run_id)
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="obp-workflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run one simulation end to end on in-memory adapters")
    p_demo.add_argument(
        "--no-lustre", action="store_true", help="a cluster without Lustre (direct upload)"
    )
    p_serve = sub.add_parser(
        "serve", help="serve the REST API over HTTP on loopback (the local gateway)"
    )
    p_serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    p_serve.add_argument("--port", type=int, default=8080, help="port (8080; 0: any free one)")
    p_serve.add_argument(
        "--dev-token",
        help="in-memory adapters only: accept this bearer token for a local user",
    )
    p_serve.add_argument(
        "--dev-groups",
        default="",
        help="comma-separated Keycloak groups of that user, e.g. /proj/VLAB/PROJECT/member",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(lustre=not args.no_lustre)
    if args.command == "serve":
        return serve(args.host, args.port, args.dev_token, args.dev_groups)
    return 2  # pragma: no cover - argparse rejects unknown commands


def serve(host: str, port: int, dev_token: str | None, dev_groups: str) -> int:
    """The API and its authorizer behind a local HTTP gateway, until interrupted."""
    from obp_workflow.adapters.fake.simple import StaticTokenVerifier
    from obp_workflow.entrypoints.bootstrap import build
    from obp_workflow.entrypoints.local_gateway import serve as serve_forever
    from obp_workflow.entrypoints.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    if dev_token:
        if settings.adapters != "fake":
            print(
                "--dev-token is only for the in-memory adapters (OBP_ADAPTERS=fake)",
                file=sys.stderr,
            )
            return 2
        groups = [g for g in dev_groups.split(",") if g]
        user = Principal("local-user", "local-user", parse_groups(groups))
        overrides["tokens"] = StaticTokenVerifier({dev_token: user})
    serve_forever(host, port, build(settings, **overrides))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
