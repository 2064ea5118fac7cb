"""The knowledge graph of one machine: JSON-LD documents with revisions in SQLite, files on disk.

State lives under the home folder (``$OBP_HOME``): ``graph.sqlite`` (WAL, safe for several
processes) and ``files/`` (``file_area.py``). The documents are the very ones Nexus is given
(``adapters/nexus/provenance.py``: the activity, one entity per output, the ids derived from
the run), so the local graph and Nexus hold the same provenance.

Tables: ``resources`` (id, project, run, revision, deprecated, document, created/updated),
``revisions`` (every revision of every resource, as Nexus keeps them), and ``files`` (the run's
files: uploaded into ``files/``, or linked to an object of the graph's bucket; revision,
deprecated, size, SHA-256 digest, media type).

- ``register``: outputs at ``s3://{storage_bucket}/{key}`` are the graph's bucket, a folder of
  a ``FileObjectStore`` (``$OBP_HOME/objects/{bucket}``): each becomes the run's file linked to
  that object (digested, not copied); an object missing or of another size than synchronised is
  ``SyncIncomplete`` naming every such output, and nothing is written. An output located at one
  of the graph's files (what the upload synchronizer returns: the file's id) has that file's
  address as its ``contentUrl``. Then the entities and the activity are written in one
  transaction: all of them or none. A document written again unchanged keeps its revision
  (as Delta >= 1.9 does); a changed one gets the next revision; a withdrawn one is never
  written again (``Conflict``).
- ``withdraw`` deprecates the run's resources and files (a new revision each); what is
  deprecated already is left alone, so it is idempotent.
- ``read``: the activity and the entities it names at their latest revision, each with Delta's
  metadata (``_rev``, ``_deprecated``, ``_createdAt``, ``_updatedAt``).
- The run's files (``run_files.py``): ``NexusUploadSynchronizer`` uploads a run's outputs into
  them (the direct upload of the local family).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from obp_workflow.adapters.nexus.provenance import (
    activity_document,
    activity_id,
    entity_document,
    entity_id,
    ids_of,
    user_iri,
)
from obp_workflow.adapters.sqlite.database import Database
from obp_workflow.core.errors import Conflict, CorruptRecord, SyncIncomplete
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import SyncedFile
from obp_workflow.ports.knowledge_graph import (
    KnowledgeGraph,
    RecordedProvenance,
    Registration,
    RunProvenance,
)

from .file_area import FOLDER_MODE, FileArea
from .object_store import FileObjectStore
from .run_files import FILES_LAYOUT, FileRow, LocalRunFiles

LAYOUT_VERSION = 1
_LAYOUT = """
CREATE TABLE IF NOT EXISTS resources (
    id          TEXT    PRIMARY KEY,
    project     TEXT    NOT NULL,
    run_id      TEXT    NOT NULL,
    rev         INTEGER NOT NULL,
    deprecated  INTEGER NOT NULL DEFAULT 0,
    document    TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS resources_by_run ON resources (project, run_id);
CREATE TABLE IF NOT EXISTS revisions (
    id          TEXT    NOT NULL,
    rev         INTEGER NOT NULL,
    deprecated  INTEGER NOT NULL,
    document    TEXT    NOT NULL,
    at          TEXT    NOT NULL,
    PRIMARY KEY (id, rev)
);
"""
_REVISION = "INSERT INTO revisions (id, rev, deprecated, document, at) VALUES (?, ?, ?, ?, ?)"

DEFAULT_ID_BASE = "https://openbrainplatform.org/workflow"
DEFAULT_SERVICE_AGENT = "https://openbrainplatform.org/workflow/service"


class SqliteKnowledgeGraph(LocalRunFiles, KnowledgeGraph):
    """The graph under ``home``; ``storage_bucket``: the bucket of ``objects`` (by default the
    ``FileObjectStore`` of ``home/objects``) whose outputs are linked as the run's files (None:
    outputs in buckets are recorded by their location only)."""

    def __init__(
        self,
        home: str | os.PathLike[str],
        *,
        storage_bucket: str | None = None,
        objects: FileObjectStore | None = None,
        id_base: str = DEFAULT_ID_BASE,
        service_agent: str = DEFAULT_SERVICE_AGENT,
        realm: str = "local",
        busy_timeout_seconds: float = 10.0,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.home = Path(home)
        self.home.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        self.area = FileArea(self.home / "files")
        self.area.sweep()
        self.storage_bucket = storage_bucket
        self.objects = objects or FileObjectStore(self.home / "objects")
        if storage_bucket is not None:
            self.objects.bucket_folder(storage_bucket)  # a bad name fails here
        self.id_base = id_base.rstrip("/")
        self.service_agent = service_agent
        self.realm = realm
        self._now = now or (lambda: datetime.now(UTC))
        self.db = Database(
            self.home / "graph.sqlite",
            _LAYOUT + FILES_LAYOUT,
            LAYOUT_VERSION,
            what="knowledge graph",
            busy_timeout_seconds=busy_timeout_seconds,
        )

    def close(self) -> None:
        self.db.close()

    def activity_id(self, project: ProjectRef, run_id: str) -> str:
        return activity_id(self.id_base, project, run_id)

    # ================================================================ the port

    def register(self, provenance: RunProvenance) -> Registration:
        header = provenance.header
        files = provenance.outcome.files
        user = user_iri(self.id_base, self.realm, header.requested_by.username)
        entities = [
            entity_id(self.id_base, header.project, header.run_id, f.relative_path) for f in files
        ]
        objects = self._objects_of(header, files)  # SyncIncomplete before anything is written
        act = self.activity_id(header.project, header.run_id)
        now = self._stamp()
        with self.db.write() as conn:
            for ident, f in zip(entities, files, strict=True):
                link = None
                content_url = f.location
                if f.relative_path in objects:
                    link = self.link_object(conn, objects[f.relative_path], now)
                else:
                    held = self.file_at(conn, f.location)
                    if held is not None:
                        content_url = held.address
                document = entity_document(
                    provenance,
                    f,
                    id_base=self.id_base,
                    user=user,
                    content_url=content_url,
                    linked=link,
                )
                self._put(conn, ident, header, document, now)
            document = activity_document(
                provenance,
                entities,
                id_base=self.id_base,
                service_agent=self.service_agent,
                user=user,
            )
            self._put(conn, act, header, document, now)
        return Registration(act, entities)

    def withdraw(self, run: RunHeader) -> None:
        now = self._stamp()
        where = (run.project.key, run.run_id)
        with self.db.write() as conn:
            rows = conn.execute(
                "SELECT id, rev, document FROM resources "
                "WHERE project = ? AND run_id = ? AND deprecated = 0",
                where,
            ).fetchall()
            for ident, rev, document in rows:
                conn.execute(
                    "UPDATE resources SET rev = ?, deprecated = 1, updated_at = ? WHERE id = ?",
                    (rev + 1, now, ident),
                )
                conn.execute(_REVISION, (ident, rev + 1, 1, document, now))
            conn.execute(
                "UPDATE files SET rev = rev + 1, deprecated = 1, updated_at = ? "
                "WHERE project = ? AND run_id = ? AND deprecated = 0",
                (now, *where),
            )

    def read(self, run: RunHeader) -> RecordedProvenance | None:
        act = self.activity_id(run.project, run.run_id)
        with self.db.read() as conn:
            activity = _resource(conn, act)
            if activity is None:
                return None
            prefix = act + "/outputs/"
            named = [i for i in ids_of(activity.get("generated")) if i.startswith(prefix)]
            entities = [e for e in (_resource(conn, i) for i in named) if e is not None]
        return RecordedProvenance(
            activity_id=act,
            activity=activity,
            entities=entities,
            revision=int(activity["_rev"]),
            withdrawn=activity["_deprecated"] is True,
        )

    # ================================================================ plumbing

    def _objects_of(self, header: RunHeader, files: Sequence[SyncedFile]) -> dict[str, FileRow]:
        """The files the outputs in the graph's bucket are to be, their objects digested.
        Objects missing or of another size than synchronised are one ``SyncIncomplete`` naming
        them all."""
        if self.storage_bucket is None:
            return {}
        prefix = f"s3://{self.storage_bucket}/"
        located: dict[str, tuple[str, Path, os.stat_result]] = {}
        offending: list[str] = []
        reasons: list[str] = []
        for f in files:
            key = f.location.removeprefix(prefix)
            if key == f.location or not key:
                continue
            there = self.objects.locate(self.storage_bucket, key)
            if there is None or there[1].st_size != f.size:
                held = "absent" if there is None else f"{there[1].st_size} bytes"
                offending.append(f.relative_path)
                reasons.append(
                    f"{f.relative_path}: the object {key!r} is {held}, not the {f.size} bytes "
                    "that were synchronised"
                )
                continue
            located[f.relative_path] = (key, *there)
        if offending:
            raise SyncIncomplete(sorted(offending), "; ".join(sorted(reasons)))
        return {
            path: self.object_to_link(header, path, key, file, info)
            for path, (key, file, info) in located.items()
        }

    def _put(
        self,
        conn: sqlite3.Connection,
        ident: str,
        run: RunHeader,
        document: dict[str, Any],
        now: str,
    ) -> None:
        """Create the resource, or write its next revision unless it holds ``document``."""
        text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
        row = conn.execute(
            "SELECT rev, deprecated, document FROM resources WHERE id = ?", (ident,)
        ).fetchone()
        if row is not None and row[1]:
            raise Conflict(
                f"{ident} is withdrawn from the knowledge graph; it is not written again"
            )
        if row is not None and row[2] == text:
            return
        rev = 1 if row is None else row[0] + 1
        if row is None:
            conn.execute(
                "INSERT INTO resources (id, project, run_id, rev, document, created_at, "
                "updated_at) VALUES (?, ?, ?, 1, ?, ?, ?)",
                (ident, run.project.key, run.run_id, text, now, now),
            )
        else:
            conn.execute(
                "UPDATE resources SET rev = ?, document = ?, updated_at = ? WHERE id = ?",
                (rev, text, now, ident),
            )
        conn.execute(_REVISION, (ident, rev, 0, text, now))


def _resource(conn: sqlite3.Connection, ident: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT rev, deprecated, document, created_at, updated_at FROM resources WHERE id = ?",
        (ident,),
    ).fetchone()
    if row is None:
        return None
    rev, deprecated, text, created, updated = row
    try:
        document: dict[str, Any] = json.loads(text)
    except ValueError:
        raise CorruptRecord(f"the stored document of {ident} is damaged") from None
    document.update(
        {"_rev": rev, "_deprecated": bool(deprecated), "_createdAt": created, "_updatedAt": updated}
    )
    return document
