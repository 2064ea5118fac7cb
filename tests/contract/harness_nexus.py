"""The KnowledgeGraph harness of the Nexus adapter: ``NexusKnowledgeGraph`` over real HTTP to the
Nexus Delta test server (``tests/nexus_server.py``), one server per harness.

- ``snapshot()``: every resource's payload by id, as Delta keeps it (its source), without the
  metadata Delta adds (``_rev``, ``_createdAt``...).
- ``revision``, ``creations``, ``withdrawn``: read from the server's state.
- ``lose_next_register_reply(error)``: the server performs every write of the next registration
  and drops the replies of the activity's requests (the registration's last write: the
  activity is written once its entities exist) until the adapter's retry budget is spent, so
  ``register`` raises ``ServiceUnavailable`` after doing its work. Only ``ServiceUnavailable``
  can be given: it is what the adapter raises when replies are lost.

Both harnesses of a suite share ``PUBLIC_BASE`` as Delta's base URI, so the IRIs Delta mints
(user IRIs, file addresses) are the same in two graphs.

The server behaves as Delta >= 1.9 does on an update that changes nothing: it answers with the
current revision and writes nothing (``DETECT_NO_CHANGE``); older Deltas write a revision. The
contract holds either way: registering again never creates and never goes back.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from obp_workflow.adapters.nexus.client import NexusSettings
from obp_workflow.adapters.nexus.graph import NexusKnowledgeGraph
from obp_workflow.core.errors import DomainError, ServiceUnavailable
from obp_workflow.core.run import RunHeader
from obp_workflow.ports.knowledge_graph import KnowledgeGraph
from tests.contract.harness import GRAPH_BUCKET, PROJECT_A, PROJECT_B
from tests.contract.harness_aws import aws_client
from tests.nexus_server import TOKEN, NexusServer

PUBLIC_BASE = "https://nexus.test.openbrainplatform.org/v1"
#: Whether the server answers an update that changes nothing without a new revision (Delta >=
#: 1.9, as production runs).
DETECT_NO_CHANGE = True
MAX_ATTEMPTS = 3
#: The S3 storage over ``GRAPH_BUCKET`` (on the session's moto server), for links.
S3_STORAGE = "nexus-data"


def nexus_settings(server: NexusServer, **overrides: Any) -> NexusSettings:
    """Settings of an adapter talking to ``server`` with small timeouts and backoff."""
    values: dict[str, Any] = {
        "endpoint": server.endpoint,
        "public_base": server.base,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "file_timeout": 10.0,
        "max_attempts": MAX_ATTEMPTS,
        "backoff_base_seconds": 0.001,
        "backoff_cap_seconds": 0.005,
        "max_retry_after_seconds": 0.01,
    }
    values.update(overrides)
    return NexusSettings(**values)


class NexusKnowledgeGraphHarness:
    def __init__(self, *, detect_no_change: bool = DETECT_NO_CHANGE) -> None:
        self.s3 = aws_client("s3")
        self.s3.create_bucket(Bucket=GRAPH_BUCKET)  # idempotent in us-east-1
        self.server = NexusServer(
            base_uri=PUBLIC_BASE,
            detect_no_change=detect_no_change,
            s3=self.s3,
            s3_storages={S3_STORAGE: GRAPH_BUCKET},
        )
        self.server.start()
        self.settings = nexus_settings(
            self.server, s3_storage=S3_STORAGE, s3_storage_bucket=GRAPH_BUCKET
        )
        for project in (PROJECT_A, PROJECT_B):
            self.server.create_project(*self.settings.project_for(project))
        self.nexus = NexusKnowledgeGraph(self.settings, lambda: TOKEN)
        self.graph: KnowledgeGraph = self.nexus

    def put_object(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=GRAPH_BUCKET, Key=key, Body=data)

    def linked(self, run: RunHeader, relative_path: str) -> tuple[str, int] | None:
        ident = self.nexus.file_id(run.project, run.run_id, relative_path)
        found = self.server.entry(ident)
        if found is None or found.kind != "file" or found.deprecated:
            return None
        state = found.current
        return (state.location, state.size) if state.origin == "Link" else None

    def creations(self) -> int:
        return self.server.creations

    def revision(self, resource_id: str) -> int | None:
        return self.server.revision(resource_id)

    def snapshot(self) -> dict[str, Any]:
        return self.server.sources()

    def lose_next_register_reply(self, error: DomainError) -> None:
        if not isinstance(error, ServiceUnavailable):
            raise TypeError("the Nexus adapter reports lost replies as ServiceUnavailable")
        self.server.lose_reply_next(self.settings.max_attempts, match=_is_activity)

    def withdrawn(self, resource_id: str) -> bool:
        return self.server.deprecated(resource_id)

    def close(self) -> None:
        self.nexus.close()
        self.server.stop()


def _is_activity(method: str, path: str) -> bool:
    """A request on a run's activity (``.../runs/{run_id}``, not one of its outputs)."""
    ident = unquote(path.rsplit("/", 1)[-1])
    return "/resources/" in path and "/runs/" in ident and "/outputs/" not in ident
