"""An in-memory knowledge graph: resources with revisions, files with digests."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from obp_workflow.core.errors import SyncIncomplete
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import SyncedFile
from obp_workflow.ports.knowledge_graph import (
    KnowledgeGraph,
    RecordedProvenance,
    Registration,
    RunProvenance,
)
from obp_workflow.ports.objects import ObjectStore

from .faults import Faults

BASE = "https://openbrainplatform.org/workflow"


def activity_id(project: ProjectRef, run_id: str) -> str:
    return f"{BASE}/{project.virtual_lab_id}/{project.project_id}/runs/{run_id}"


def entity_id(project: ProjectRef, run_id: str, path: str) -> str:
    return f"{activity_id(project, run_id)}/outputs/{path}"


@dataclass
class StoredFile:
    data: bytes
    digest: str


@dataclass(frozen=True)
class LinkedFile:
    """A file of the graph that is an object of its storage bucket (linked, not copied)."""

    key: str
    size: int
    withdrawn: bool = False


class FakeKnowledgeGraph(KnowledgeGraph):
    """Resources by id with revisions, uploaded files, and files linked to the objects of
    ``storage_bucket`` in ``objects`` (both None: nothing is linked)."""

    def __init__(
        self, objects: ObjectStore | None = None, storage_bucket: str | None = None
    ) -> None:
        self.resources: dict[str, tuple[int, dict[str, Any]]] = {}
        self.files: dict[str, StoredFile] = {}
        self.links: dict[str, LinkedFile] = {}
        self.objects = objects
        self.storage_bucket = storage_bucket
        self.creations = 0
        self.faults = Faults()
        self._lock = threading.Lock()

    def register(self, provenance: RunProvenance) -> Registration:
        self.faults.before("register")
        header = provenance.header
        act = activity_id(header.project, header.run_id)
        entities = []
        links = self._link_all(header, provenance.outcome.files)
        with self._lock:
            for f in provenance.outcome.files:
                ent = entity_id(header.project, header.run_id, f.relative_path)
                linked = links[f.relative_path]
                self._put(
                    ent,
                    {
                        "@type": "Entity",
                        "wasGeneratedBy": act,
                        "location": f.location if linked is None else ent + "/file",
                        "atLocation": None if linked is None else f.location,
                        "size": f.size,
                        "digest": f.digest,
                    },
                )
                entities.append(ent)
            self._put(
                act,
                {
                    "@type": "WorkflowExecution",
                    "status": "Done",
                    "wasAttributedTo": header.requested_by.subject,
                    "startedAtTime": provenance.started_at.isoformat(),
                    "endedAtTime": provenance.ended_at.isoformat(),
                    "jobId": provenance.job_id,
                    "accounting": None
                    if provenance.accounting is None
                    else {
                        "nodes": provenance.accounting.nodes,
                        "elapsed": provenance.accounting.elapsed_seconds,
                        "exitCode": provenance.accounting.exit_code,
                    },
                    "generated": entities,
                },
            )
        self.faults.after("register")
        return Registration(act, entities)

    def withdraw(self, run: RunHeader) -> None:
        self.faults.before("withdraw")
        prefix = activity_id(run.project, run.run_id)
        with self._lock:
            for ident, (rev, body) in list(self.resources.items()):
                if (ident == prefix or ident.startswith(prefix + "/")) and not body.get(
                    "_deprecated"
                ):
                    self.resources[ident] = (rev + 1, {**body, "_deprecated": True})
            for ident, link in list(self.links.items()):
                if ident.startswith(prefix + "/"):
                    self.links[ident] = replace(link, withdrawn=True)
        self.faults.after("withdraw")

    def read(self, run: RunHeader) -> RecordedProvenance | None:
        act = activity_id(run.project, run.run_id)
        with self._lock:
            found = self.resources.get(act)
            if found is None:
                return None
            revision, body = found
            entities = [
                {"@id": ident, **self.resources[ident][1]}
                for ident in body.get("generated", [])
                if ident in self.resources
            ]
        return RecordedProvenance(
            activity_id=act,
            activity={"@id": act, **body},
            entities=entities,
            revision=revision,
            withdrawn=bool(body.get("_deprecated")),
        )

    def upload_file(self, file_id: str, data: bytes) -> str:
        """Store a file (idempotent by id and digest); its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._lock:
            existing = self.files.get(file_id)
            if existing is None or existing.digest != digest:
                self.files[file_id] = StoredFile(data, digest)
        return digest

    def _link_all(
        self, header: RunHeader, files: Sequence[SyncedFile]
    ) -> dict[str, LinkedFile | None]:
        links: dict[str, LinkedFile | None] = {}
        offending: list[str] = []
        reasons: list[str] = []
        for f in files:
            try:
                links[f.relative_path] = self._link(header, f)
            except SyncIncomplete as exc:
                offending.extend(exc.offending)
                reasons.append(exc.message)
        if offending:
            raise SyncIncomplete(sorted(offending), "; ".join(sorted(reasons)))
        return links

    def _link(self, header: RunHeader, file: SyncedFile) -> LinkedFile | None:
        prefix = f"s3://{self.storage_bucket}/"
        if self.objects is None or self.storage_bucket is None:
            return None
        if not file.location.startswith(prefix) or file.location == prefix:
            return None
        key = file.location.removeprefix(prefix)
        found = self.objects.head(self.storage_bucket, key)
        if found is None or found.size != file.size:
            held = "absent" if found is None else f"{found.size} bytes"
            raise SyncIncomplete(
                [file.relative_path],
                f"{file.relative_path}: the object {key!r} is {held}, not the {file.size} "
                "bytes that were synchronised",
            )
        linked = LinkedFile(key, found.size)
        with self._lock:
            self.links[entity_id(header.project, header.run_id, file.relative_path) + "/file"] = (
                linked
            )
        return linked

    def _put(self, ident: str, payload: dict[str, Any]) -> None:
        current = self.resources.get(ident)
        if current is None:
            self.creations += 1
            self.resources[ident] = (1, payload)
        else:
            self.resources[ident] = (current[0] + 1, payload)
