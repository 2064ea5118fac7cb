"""Small builders of valid domain objects, shared by the unit tests of the core."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from obp_workflow.adapters.fake.cluster_provisioner import example_cluster
from obp_workflow.core.cluster import ClusterHandle
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import Requester, RunHeader

VLAB_ID = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
PROJECT_ID = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"
RUN_ID = "run-0123456789abcdef"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    """A point on a fixed test timeline, ``minutes`` after T0."""
    return T0 + timedelta(minutes=minutes)


def project() -> ProjectRef:
    return ProjectRef.parse(VLAB_ID, PROJECT_ID)


def request(**fields: Any) -> SimulationRequest:
    """A valid command-form request; ``fields`` replace or add top-level fields."""
    data: dict[str, Any] = {"command": ["neurodamus", "--config", "simulation_config.json"]}
    data.update(fields)
    return SimulationRequest.parse(data)


def header(req: SimulationRequest | None = None, run_id: str = RUN_ID) -> RunHeader:
    return RunHeader(
        run_id=run_id,
        project=project(),
        requested_by=Requester("f0e1d2c3-aaaa-bbbb-cccc-000000000001", "alice"),
        request=req if req is not None else request(),
        created_at=T0,
        idempotency_key="idem-1",
    )


def cluster(**changes: Any) -> ClusterHandle:
    """The fake provisioner's example cluster for the test project, with ``changes`` applied."""
    return dataclasses.replace(example_cluster(project()), **changes)
