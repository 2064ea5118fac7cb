"""Harnesses of the local family's graph and object store: everything in a temporary OBP_HOME.

- ``local-files`` (ObjectStore): ``FileObjectStore`` over ``{home}/objects``; objects are put
  behind its back as files (written aside, then renamed in, as a writer publishes them). A
  folder has no pages: ``list_requests`` is 0.
- ``local-graph`` (KnowledgeGraph): ``SqliteKnowledgeGraph`` under the home, its bucket
  ``GRAPH_BUCKET`` a ``FileObjectStore`` bucket (``{home}/objects/{GRAPH_BUCKET}``), so an output
  the Lustre HSM would export to ``s3://GRAPH_BUCKET/{key}`` is the file at that key there.
  The controls read ``graph.sqlite`` with their own connection: ``creations`` counts the
  resources (none is ever deleted), ``revision`` and ``withdrawn`` read a resource's row,
  ``snapshot`` gives each resource's document (with ``_deprecated`` once withdrawn), ``linked``
  the key and size of a run's file linked to an object. ``lose_next_register_reply``: the next
  ``register`` commits everything, then its caller gets the error instead of the registration.
- ``local-upload`` (DataSynchronizer): ``NexusUploadSynchronizer`` over the fake cluster (no
  Lustre: outputs leave by direct upload) and ``SqliteKnowledgeGraph``'s run files. ``block``
  puts a folder where the output's file would go, so its rename into place fails and the upload
  never lands; ``stored`` counts the run's files recorded and on disk; ``transfers`` counts the
  writes that reached the disk (each write of a file is a revision of it).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obp_workflow.adapters.local.knowledge_graph import SqliteKnowledgeGraph
from obp_workflow.adapters.local.object_store import MARKER, FileObjectStore
from obp_workflow.adapters.nexus.upload import NexusUploadSynchronizer
from obp_workflow.core.errors import DomainError
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import SyncLimits, SyncPlan, SyncRefused, choose_sync
from obp_workflow.ports.cluster import ClusterGateway
from obp_workflow.ports.knowledge_graph import KnowledgeGraph, Registration, RunProvenance
from obp_workflow.ports.objects import ObjectStore
from obp_workflow.ports.sync import DataSynchronizer
from tests.contract.harness import GRAPH_BUCKET, Ending, FakeClusterGatewayHarness

if TYPE_CHECKING:
    from tests.contract.harness import DataSynchronizerHarness, KnowledgeGraphHarness
    from tests.contract.harness_aws import ObjectStoreHarness


def put_file(path: Path, data: bytes) -> None:
    """Publish a file whole: written aside, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    aside.write_bytes(data)
    aside.replace(path)


def put_object(bucket_folder: Path, key: str, data: bytes) -> None:
    """Put an object in a bucket folder as ``FileObjectStore`` lays them out: the file at its
    key's path, or the ``MARKER`` in that folder when the key is also the start of others."""
    parts = key.split("/")
    for n in range(1, len(parts)):  # an object whose key is now a folder moves into it
        above = bucket_folder.joinpath(*parts[:n])
        if above.is_file():
            moved = above.with_name(f".{above.name}.moving")
            above.replace(moved)
            above.mkdir()
            moved.replace(above / MARKER)
    path = bucket_folder.joinpath(*parts)
    put_file(path / MARKER if path.is_dir() else path, data)


class _Home:
    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="obp-home-")
        self.home = Path(self._dir.name)

    def close(self) -> None:
        self._dir.cleanup()


# ==================================================================== ObjectStore


class FileObjectStoreHarness(_Home):
    def __init__(self) -> None:
        super().__init__()
        self.root = self.home / "objects"
        self.store: ObjectStore = FileObjectStore(self.root)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        put_object(self.root / bucket, key, data)

    def put_many(self, bucket: str, keys: Sequence[str], data: bytes) -> None:
        for key in keys:
            self.put(bucket, key, data)

    def list_requests(self) -> int:
        return 0


# ==================================================================== KnowledgeGraph


class _RepliesLost(SqliteKnowledgeGraph):
    """The graph whose next registration's reply is lost after its work is committed."""

    lost: DomainError | None = None

    def register(self, provenance: RunProvenance) -> Registration:
        done = super().register(provenance)
        if self.lost is not None:
            error, self.lost = self.lost, None
            raise error
        return done


class SqliteKnowledgeGraphHarness(_Home):
    def __init__(self) -> None:
        super().__init__()
        self.objects = FileObjectStore(self.home / "objects")
        self.local = _RepliesLost(self.home, storage_bucket=GRAPH_BUCKET, objects=self.objects)
        self.graph: KnowledgeGraph = self.local

    def _query(self, sql: str, *args: Any) -> list[Any]:
        conn = sqlite3.connect(f"file:{self.home / 'graph.sqlite'}?mode=ro", uri=True)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def put_object(self, key: str, data: bytes) -> None:
        put_object(self.home / "objects" / GRAPH_BUCKET, key, data)

    def linked(self, run: RunHeader, relative_path: str) -> tuple[str, int] | None:
        ident = self.local.file_id(run.project, run.run_id, relative_path)
        rows = self._query(
            "SELECT location, size FROM files WHERE id = ? AND origin = 'link' AND bucket = ? "
            "AND deprecated = 0",
            ident,
            GRAPH_BUCKET,
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def creations(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM resources")[0][0])

    def revision(self, resource_id: str) -> int | None:
        rows = self._query("SELECT rev FROM resources WHERE id = ?", resource_id)
        return int(rows[0][0]) if rows else None

    def snapshot(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for ident, document, deprecated in self._query(
            "SELECT id, document, deprecated FROM resources"
        ):
            payload = json.loads(document)
            found[ident] = {**payload, "_deprecated": True} if deprecated else payload
        return found

    def lose_next_register_reply(self, error: DomainError) -> None:
        self.local.lost = error

    def withdrawn(self, resource_id: str) -> bool:
        rows = self._query("SELECT deprecated FROM resources WHERE id = ?", resource_id)
        return bool(rows and rows[0][0])

    def close(self) -> None:
        self.local.close()
        super().close()


# ==================================================================== DataSynchronizer


class LocalUploadSynchronizerHarness(_Home):
    def __init__(self) -> None:
        super().__init__()
        # A small nominal size: every output is longer, so each has its own size.
        self.cluster_gateway_harness = FakeClusterGatewayHarness(lustre=False, output_size=16)
        self.fake_cluster = self.cluster_gateway_harness.fake
        self.gateway: ClusterGateway = self.fake_cluster
        self.cluster = self.cluster_gateway_harness.cluster
        self.local = SqliteKnowledgeGraph(self.home)
        self.sync: DataSynchronizer = NexusUploadSynchronizer(self.gateway, self.local)

    def _query(self, sql: str, *args: Any) -> list[Any]:
        conn = sqlite3.connect(f"file:{self.home / 'graph.sqlite'}?mode=ro", uri=True)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def run_simulation(self, outputs: Sequence[str]) -> tuple[RunHeader, SyncPlan]:
        job = self.cluster_gateway_harness.job(Ending.COMPLETE, outputs=outputs)
        job_id = self.gateway.submit(self.cluster, job.spec)
        self.cluster_gateway_harness.let_finish(job_id)
        found = {f.path: f.size for f in self.gateway.list_outputs(self.cluster, job.folder)}
        plan = choose_sync(self.cluster.storage, job.folder, list(outputs), found, SyncLimits())
        assert not isinstance(plan, SyncRefused), plan
        return job.header, plan

    def let_sync_job_finish(self, job_id: str) -> None:
        raise AssertionError(f"a direct upload runs no sync job (asked to wait for {job_id})")

    def block(self, header: RunHeader, plan: SyncPlan, relative_path: str) -> None:
        place = self.local.area.relative(header.project, header.run_id, relative_path)
        self.local.area.path(place).mkdir(parents=True)

    def sync_jobs(self, header: RunHeader) -> int:
        return sum(
            1 for j in self.fake_cluster.jobs.values() if j.tag.startswith(header.tag + "-sync")
        )

    def stored(self, header: RunHeader) -> int:
        rows = self._query(
            "SELECT location, size FROM files WHERE project = ? AND run_id = ? AND deprecated = 0",
            header.project.key,
            header.run_id,
        )
        return sum(1 for place, size in rows if _size(self.local.area.path(place)) == size)

    def transfers(self) -> int:
        rows = self._query("SELECT COALESCE(SUM(rev - deprecated), 0) FROM files")
        return int(rows[0][0])

    def close(self) -> None:
        self.local.close()
        super().close()


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


if TYPE_CHECKING:  # mypy proves each harness implements its port's harness protocol
    _object_stores: list[type[ObjectStoreHarness]] = [FileObjectStoreHarness]
    _graphs: list[type[KnowledgeGraphHarness]] = [SqliteKnowledgeGraphHarness]
    _synchronizers: list[type[DataSynchronizerHarness]] = [LocalUploadSynchronizerHarness]
