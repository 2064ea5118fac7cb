"""An in-memory knowledge graph: resources with revisions, files with digests."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunHeader
from obp_workflow.ports.knowledge_graph import KnowledgeGraph, Registration, RunProvenance

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


class InMemoryKnowledgeGraph(KnowledgeGraph):
    def __init__(self) -> None:
        self.resources: dict[str, tuple[int, dict[str, Any]]] = {}
        self.files: dict[str, StoredFile] = {}
        self.creations = 0
        self.faults = Faults()
        self._lock = threading.Lock()

    def register(self, provenance: RunProvenance) -> Registration:
        self.faults.before("register")
        header = provenance.header
        act = activity_id(header.project, header.run_id)
        entities = []
        with self._lock:
            for f in provenance.outcome.files:
                ent = entity_id(header.project, header.run_id, f.relative_path)
                self._put(
                    ent,
                    {
                        "@type": "Entity",
                        "wasGeneratedBy": act,
                        "location": f.location,
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
        self.faults.after("withdraw")

    def upload_file(self, file_id: str, data: bytes) -> str:
        """Store a file (idempotent by id and digest); its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._lock:
            existing = self.files.get(file_id)
            if existing is None or existing.digest != digest:
                self.files[file_id] = StoredFile(data, digest)
        return digest

    def _put(self, ident: str, payload: dict[str, Any]) -> None:
        current = self.resources.get(ident)
        if current is None:
            self.creations += 1
            self.resources[ident] = (1, payload)
        else:
            self.resources[ident] = (current[0] + 1, payload)
