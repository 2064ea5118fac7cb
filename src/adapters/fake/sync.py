"""An in-memory DataSynchronizer over the fake cluster, bucket and knowledge graph."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime

from obp_workflow.core.cluster import ClusterHandle, KeyRole
from obp_workflow.core.errors import SubmissionUnclear, SyncIncomplete
from obp_workflow.core.jobspec import JobSpec
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import LustreHsmExport, SyncedFile, SyncOutcome, SyncPlan
from obp_workflow.ports.objects import ObjectInfo, ObjectStore
from obp_workflow.ports.sync import DataSynchronizer, SyncJobSubmitted, SyncStart
from obp_workflow.ports.system import Clock

from .cluster import FakeCluster, FakeJob
from .faults import Faults
from .knowledge_graph import InMemoryKnowledgeGraph, entity_id


class InMemoryBucket(ObjectStore):
    """S3 objects by (bucket, key). Keys in ``blocked`` never appear (a stuck export).

    Also the fake ObjectStore: ``head`` and ``list`` see what ``put`` stored, with S3's etag
    of a single-part upload (the MD5 of the content) and the time of the put (``clock``, or
    the system's time when none is given).
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.blocked: set[str] = set()
        self._modified: dict[tuple[str, str], datetime] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def put(self, bucket: str, key: str, data: bytes) -> None:
        now = self._clock.now() if self._clock is not None else datetime.now(UTC)
        with self._lock:
            if key not in self.blocked:
                self.objects[(bucket, key)] = data
                self._modified[(bucket, key)] = now

    def sizes(self, bucket: str) -> Mapping[str, int]:
        with self._lock:
            return {k: len(v) for (b, k), v in self.objects.items() if b == bucket}

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        with self._lock:
            data = self.objects.get((bucket, key))
            if data is None:
                return None
            return self._info(bucket, key, data)

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:  # a snapshot: puts during the iteration are not seen
            found = sorted(
                (
                    self._info(b, k, v)
                    for (b, k), v in self.objects.items()
                    if b == bucket and k.startswith(prefix)
                ),
                key=lambda info: info.key,
            )
        yield from found

    def _info(self, bucket: str, key: str, data: bytes) -> ObjectInfo:
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return ObjectInfo(key, len(data), etag, self._modified.get((bucket, key)))


class FakeDataSynchronizer(DataSynchronizer):
    def __init__(
        self, cluster: FakeCluster, bucket: InMemoryBucket, graph: InMemoryKnowledgeGraph
    ) -> None:
        self.cluster = cluster
        self.bucket = bucket
        self.graph = graph
        self.faults = Faults()

    def start(
        self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan, attempt: int
    ) -> SyncStart:
        self.faults.before("start")
        if isinstance(plan, LustreHsmExport):
            tag = f"{run.tag}-sync-{attempt}"
            job_id = self.cluster.find_by_tag(cluster, tag, KeyRole.ADMIN)
            if job_id is None:
                spec = JobSpec(
                    tag=tag,
                    run_folder=cluster.run_folder(run.run_id),
                    script=f"sync-{attempt}.sbatch",
                    role=KeyRole.ADMIN,
                    files={f"sync-{attempt}.sbatch": "#!/bin/bash\n# hsm archive\n"},
                )
                try:
                    job_id = self.cluster.submit(cluster, spec)
                except SubmissionUnclear:
                    job_id = self.cluster.find_by_tag(cluster, tag, KeyRole.ADMIN)
                    if job_id is None:
                        raise
                self.cluster.on_complete(job_id, self._archiver(plan))
            self.faults.after("start")
            return SyncJobSubmitted(job_id)
        files = []
        for f in plan.files:
            file_id = entity_id(run.project, run.run_id, f.relative_path) + "/file"
            stored = self.graph.files.get(file_id)
            if stored is not None and len(stored.data) == f.size:
                files.append(SyncedFile(f.relative_path, f.size, file_id, stored.digest))
                continue  # already uploaded by an earlier attempt
            folder = cluster.run_folder(run.run_id)
            data = b"".join(self.cluster.fetch_output(cluster, folder, f.relative_path))
            digest = self.graph.upload_file(file_id, data)
            files.append(SyncedFile(f.relative_path, len(data), file_id, digest))
        self.faults.after("start")
        return SyncOutcome(plan.kind, tuple(files))

    def confirm(self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan) -> SyncOutcome:
        self.faults.before("confirm")
        if isinstance(plan, LustreHsmExport):
            sizes = self.bucket.sizes(plan.bucket)
            bad = [f.relative_path for f in plan.files if sizes.get(f.s3_key or "") != f.size]
            if bad:
                raise SyncIncomplete(bad)
            return SyncOutcome(
                plan.kind,
                tuple(
                    SyncedFile(f.relative_path, f.size, f"s3://{plan.bucket}/{f.s3_key}")
                    for f in plan.files
                ),
            )
        files = []
        bad = []
        for f in plan.files:
            stored = self.graph.files.get(
                entity_id(run.project, run.run_id, f.relative_path) + "/file"
            )
            if stored is None or len(stored.data) != f.size:
                bad.append(f.relative_path)
            else:
                files.append(
                    SyncedFile(
                        f.relative_path,
                        f.size,
                        entity_id(run.project, run.run_id, f.relative_path) + "/file",
                        stored.digest,
                    )
                )
        if bad:
            raise SyncIncomplete(bad)
        return SyncOutcome(plan.kind, tuple(files))

    def _archiver(self, plan: LustreHsmExport) -> Callable[[FakeJob], None]:
        """What the elevated job does when it completes: archive every file to the bucket."""

        def archive(_job: FakeJob) -> None:
            for f in plan.files:
                data = self.cluster.files.get(f.cluster_path)
                if data is not None and f.s3_key is not None:
                    self.bucket.put(plan.bucket, f.s3_key, data)

        return archive


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


__all__ = ["FakeDataSynchronizer", "FakeJob", "InMemoryBucket", "digest_of"]
