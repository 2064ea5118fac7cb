"""An in-memory DataSynchronizer over the fake cluster, bucket and knowledge graph."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from obp_workflow.core.cluster import ClusterHandle, KeyRole
from obp_workflow.core.errors import SubmissionUnclear, SyncIncomplete
from obp_workflow.core.jobspec import JobSpec
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import LustreHsmExport, SyncedFile, SyncOutcome, SyncPlan
from obp_workflow.ports.sync import DataSynchronizer, SyncJobSubmitted, SyncStart

from .cluster_gateway import FakeClusterGateway, FakeJob
from .faults import Faults
from .knowledge_graph import FakeKnowledgeGraph, entity_id
from .object_store import FakeObjectStore


class FakeDataSynchronizer(DataSynchronizer):
    def __init__(
        self, cluster: FakeClusterGateway, bucket: FakeObjectStore, graph: FakeKnowledgeGraph
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


__all__ = ["FakeDataSynchronizer", "digest_of"]
