"""The ClusterProvisioner contract against HttpClusterProvisioner over the SigV4-checking test
server.

The server (``tests/provisioner_server.py``) plays API Gateway and the provisioner over real HTTP
on loopback. By default a creation unfolds as in production, only in fewer looks: the first GET
after the POST is a 404 (the creator Lambda has not made the stack yet), then CREATE_IN_PROGRESS
without a head node, then with one, until ``let_creation_finish``. Deletions are immediate here
(``delete_gets=0``): the port's contract reads "delete, then describe is NOT_FOUND" and
"delete, then request creates anew"; the realistic DELETE_IN_PROGRESS is covered by
``tests/integration/test_provisioner_http.py``.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from obp_workflow.adapters.provisioner.description import ProvisionerSettings
from obp_workflow.adapters.provisioner.http import HttpClusterProvisioner
from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.cluster import ClusterProvisioner
from tests.provisioner_server import CREDENTIALS, REGION, Lifecycle, ProvisionerServer

if TYPE_CHECKING:
    from tests.contract.harness import CreatingProvisionerHarness

NEXUS_BUCKET = "nexus-data-bucket"
#: Quick to give up and to retry, so the fault tests stay short.
TEST_SETTINGS = ProvisionerSettings(
    lustre_bucket=NEXUS_BUCKET,
    connect_timeout=2.0,
    read_timeout=5.0,
    max_attempts=4,
    backoff_base_seconds=0.01,
    backoff_cap_seconds=0.05,
    max_retry_after_seconds=2.0,
)
CONTRACT_LIFECYCLE = Lifecycle(unseen_gets=1, young_gets=1, in_progress_gets=1, delete_gets=0)


def fake_host_key(cluster_name: str) -> str:
    """A well-formed ed25519 public key, the same for a cluster name every time."""
    raw = hashlib.sha256(cluster_name.encode()).digest()
    kind = b"ssh-ed25519"
    blob = struct.pack(">I", len(kind)) + kind + struct.pack(">I", len(raw)) + raw
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


class HttpClusterProvisionerHarness:
    def __init__(
        self,
        *,
        settings: ProvisionerSettings = TEST_SETTINGS,
        lifecycle: Lifecycle | None = None,
        **server_options: Any,
    ) -> None:
        self.server = ProvisionerServer(
            lifecycle=lifecycle or CONTRACT_LIFECYCLE, **server_options
        ).start()
        self.http = self.adapter(settings)
        self.provisioner: ClusterProvisioner = self.http

    def adapter(
        self, settings: ProvisionerSettings = TEST_SETTINGS, **kwargs: Any
    ) -> HttpClusterProvisioner:
        """Another adapter on the same server (a restarted service, other settings...)."""
        options: dict[str, Any] = {
            "credentials": CREDENTIALS,
            "region": REGION,
            "settings": settings,
            "host_key_for": fake_host_key,
            **kwargs,
        }
        return HttpClusterProvisioner(self.server.url, **options)

    def creations(self) -> int:
        return self.server.creations

    def fail_next_creation(self, project: ProjectRef, reason: str) -> None:
        self.server.fail_next_creation(project.virtual_lab_id, project.project_id, reason)

    def let_creation_finish(self, project: ProjectRef) -> None:
        self.server.finish_creation(project.virtual_lab_id, project.project_id)

    def close(self) -> None:
        self.http.close()
        self.server.stop()


if TYPE_CHECKING:  # mypy proves the harness implements the harness protocol
    _provisioners: list[Callable[[], CreatingProvisionerHarness]] = [HttpClusterProvisionerHarness]
