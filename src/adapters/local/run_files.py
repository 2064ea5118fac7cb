"""The local graph's run files: uploaded outputs on disk, and objects of its bucket linked.

A run's output becomes the file ``{entity}/file`` (``provenance.file_id``), one row of the
``files`` table: its revision, whether it is withdrawn (deprecated), its origin (``upload``:
content under ``files/``, ``file_area.py``; ``link``: an object of the graph's bucket, not
copied), its size, SHA-256 digest and media type. Files are handed out as ``NexusFile`` records,
what ``NexusUploadSynchronizer`` expects of the files it uploads (``NexusFiles``), with a
``file://`` address where their content is read.

- ``upload_file`` streams the content to a temporary file first, then, holding the database's
  write lock (which orders the writers of one file, in every process), renames it into place
  and records its digest; the same content again writes nothing (no new revision).
- ``file_info`` is None for a file absent, withdrawn, or no longer on disk with its size.
- a withdrawn file is never written again (``Conflict``).
"""

from __future__ import annotations

import os
import posixpath
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from obp_workflow.adapters.nexus.files import NexusFile
from obp_workflow.adapters.nexus.provenance import file_id, media_type_of
from obp_workflow.adapters.sqlite.database import Database
from obp_workflow.core.errors import Conflict, ServiceUnavailable, SyncIncomplete
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunHeader

from .file_area import FileArea, Received, discard, sha256_of
from .object_store import FileObjectStore

FILES_LAYOUT = """
CREATE TABLE IF NOT EXISTS files (
    id            TEXT    PRIMARY KEY,
    project       TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    relative_path TEXT    NOT NULL,
    rev           INTEGER NOT NULL,
    deprecated    INTEGER NOT NULL DEFAULT 0,
    origin        TEXT    NOT NULL CHECK (origin IN ('upload', 'link')),
    bucket        TEXT,
    location      TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    digest        TEXT    NOT NULL,
    media_type    TEXT    NOT NULL,
    stamp         TEXT,
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS files_by_run ON files (project, run_id);
"""
_GET = (
    "SELECT id, project, run_id, relative_path, rev, deprecated, origin, bucket, location, "
    "size, digest, media_type, stamp FROM files WHERE id = ?"
)
_INSERT = (
    "INSERT INTO files (id, project, run_id, relative_path, rev, deprecated, origin, bucket, "
    "location, size, digest, media_type, stamp, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = (
    "UPDATE files SET rev = ?, origin = ?, bucket = ?, location = ?, size = ?, digest = ?, "
    "media_type = ?, stamp = ?, updated_at = ? WHERE id = ?"
)


@dataclass(frozen=True)
class FileRow:
    """One row of ``files``. ``location``: under ``files/`` (upload) or the object's key (link);
    ``stamp``: the linked object's identity when it was digested."""

    id: str
    project: str
    run_id: str
    relative_path: str
    rev: int
    deprecated: bool
    origin: str
    bucket: str | None
    location: str
    size: int
    digest: str
    media_type: str
    stamp: str | None = None


class LocalRunFiles:
    """The run's files of the graph under ``area`` and ``db`` (``files`` table)."""

    db: Database
    area: FileArea
    objects: FileObjectStore
    storage_bucket: str | None
    id_base: str
    _now: Callable[[], datetime]

    def file_id(self, project: ProjectRef, run_id: str, relative_path: str) -> str:
        return file_id(self.id_base, project, run_id, relative_path)

    def file_info(self, run: RunHeader, relative_path: str) -> NexusFile | None:
        """The run's file for ``relative_path``; None when there is none, it is withdrawn, or
        its content is no longer on disk with the size recorded."""
        self.area.relative(run.project, run.run_id, relative_path)  # confined, or refused
        with self.db.read() as conn:
            row = _row(conn, self.file_id(run.project, run.run_id, relative_path))
        if row is None or row.deprecated or not self._present(row):
            return None
        return self.nexus_file(row)

    def upload_file(
        self,
        run: RunHeader,
        relative_path: str,
        stream: IO[bytes] | Iterable[bytes],
        size: int,
        *,
        media_type: str | None = None,
        digest: str | None = None,
    ) -> NexusFile:
        """Store one output as the run's file for ``relative_path``, streamed. ``digest``
        ("sha256:<hex>"), when known, spares reading a content the graph holds already. The
        same content again writes nothing; another content is a new revision. A stream of
        another length than ``size``, or not of the given digest, is ``SyncIncomplete``."""
        if size < 0:
            raise ValueError("size must not be negative")
        place = self.area.relative(run.project, run.run_id, relative_path)
        known = _hex_of(digest)
        if known is not None:
            held = self.file_info(run, relative_path)
            if held is not None and held.size == size and held.digest == f"sha256:{known}":
                return held
        received = self.area.receive(stream, size, relative_path)
        try:
            if known is not None and received.sha256 != known:
                raise SyncIncomplete(
                    [relative_path],
                    f"{relative_path}: the stream's SHA-256 is {received.sha256}, not {known}",
                )
            wanted = FileRow(
                id=self.file_id(run.project, run.run_id, relative_path),
                project=run.project.key,
                run_id=run.run_id,
                relative_path=relative_path,
                rev=1,
                deprecated=False,
                origin="upload",
                bucket=None,
                location=place,
                size=received.size,
                digest=f"sha256:{received.sha256}",
                media_type=media_type or media_type_of(relative_path),
            )
            return self.nexus_file(self._store(wanted, received))
        finally:
            discard(received.path)

    def object_to_link(
        self, run: RunHeader, relative_path: str, key: str, path: Path, info: os.stat_result
    ) -> FileRow:
        """The run's file an object of the graph's bucket is to be, digested (unless the file
        already links it unchanged); done before the write transaction, which it never holds
        for the time of reading an object."""
        stamp = f"{info.st_dev}:{info.st_ino}:{info.st_size}:{info.st_mtime_ns}"
        ident = self.file_id(run.project, run.run_id, relative_path)
        with self.db.read() as conn:
            row = _row(conn, ident)
        if row is not None and (row.origin, row.bucket, row.location, row.stamp) == (
            "link",
            self.storage_bucket,
            key,
            stamp,
        ):
            digest = row.digest
        else:
            try:
                digest = "sha256:" + sha256_of(path)
            except OSError as exc:
                raise ServiceUnavailable(f"the object {key!r} could not be read: {exc}") from None
        return FileRow(
            id=ident,
            project=run.project.key,
            run_id=run.run_id,
            relative_path=relative_path,
            rev=1,
            deprecated=False,
            origin="link",
            bucket=self.storage_bucket,
            location=key,
            size=info.st_size,
            digest=digest,
            media_type=media_type_of(relative_path),
            stamp=stamp,
        )

    def link_object(self, conn: sqlite3.Connection, wanted: FileRow, now: str) -> NexusFile:
        """Write the run's file linked to an object (``object_to_link``) in the caller's
        transaction; a file that links it already, unchanged, is left as it is."""
        row = _row(conn, wanted.id)
        if row is not None:
            _writable(row)
            if (row.origin, row.bucket, row.location, row.size, row.digest, row.stamp) == (
                wanted.origin,
                wanted.bucket,
                wanted.location,
                wanted.size,
                wanted.digest,
                wanted.stamp,
            ):
                return self.nexus_file(row)
        return self.nexus_file(_put(conn, row, wanted, now))

    def file_at(self, conn: sqlite3.Connection, location: str) -> NexusFile | None:
        """The graph's file an output is located at (by its id), if the graph holds it."""
        if not location.startswith(self.id_base + "/"):
            return None
        row = _row(conn, location)
        return None if row is None or row.deprecated else self.nexus_file(row)

    def nexus_file(self, row: FileRow) -> NexusFile:
        return NexusFile(
            id=row.id,
            rev=row.rev,
            address=self._path(row).absolute().as_uri(),
            location=row.location,
            size=row.size,
            digest=row.digest,
            filename=posixpath.basename(row.relative_path),
            media_type=row.media_type,
        )

    # ---------------------------------------------------------------- plumbing

    def _store(self, wanted: FileRow, received: Received) -> FileRow:
        now = self._stamp()
        with self.db.write() as conn:  # the write lock orders the renames of one file
            row = _row(conn, wanted.id)
            if row is not None:
                _writable(row)
                if (row.origin, row.location, row.size, row.digest) == (
                    wanted.origin,
                    wanted.location,
                    wanted.size,
                    wanted.digest,
                ) and self._present(row):
                    return row  # the same content: nothing written
            self.area.publish(received, wanted.location)
            return _put(conn, row, wanted, now)

    def _present(self, row: FileRow) -> bool:
        if row.origin != "upload":
            return True
        return self.area.size_of(row.location) == row.size

    def _path(self, row: FileRow) -> Path:
        if row.origin == "link" and row.bucket is not None:
            found = self.objects.locate(row.bucket, row.location)
            if found is not None:
                return found[0]
            return self.objects.bucket_folder(row.bucket).joinpath(*row.location.split("/"))
        return self.area.path(row.location)

    def _stamp(self) -> str:
        """Now, as the rows record it."""
        return self._now().astimezone(UTC).isoformat().replace("+00:00", "Z")


def _row(conn: sqlite3.Connection, ident: str) -> FileRow | None:
    found = conn.execute(_GET, (ident,)).fetchone()
    if found is None:
        return None
    values = list(found)
    values[5] = bool(values[5])
    return FileRow(*values)


def _writable(row: FileRow) -> None:
    if row.deprecated:
        raise Conflict(f"the graph's file {row.id} is withdrawn; it is not written again")


def _put(conn: sqlite3.Connection, row: FileRow | None, wanted: FileRow, now: str) -> FileRow:
    """Create the file, or write its next revision."""
    if row is None:
        conn.execute(
            _INSERT,
            (
                wanted.id,
                wanted.project,
                wanted.run_id,
                wanted.relative_path,
                1,
                0,
                wanted.origin,
                wanted.bucket,
                wanted.location,
                wanted.size,
                wanted.digest,
                wanted.media_type,
                wanted.stamp,
                now,
                now,
            ),
        )
        return replace(wanted, rev=1)
    written = replace(wanted, rev=row.rev + 1)
    conn.execute(
        _UPDATE,
        (
            written.rev,
            written.origin,
            written.bucket,
            written.location,
            written.size,
            written.digest,
            written.media_type,
            written.stamp,
            now,
            written.id,
        ),
    )
    return written


def _hex_of(digest: str | None) -> str | None:
    if digest is None:
        return None
    algorithm, _, value = digest.partition(":")
    return value.lower() if algorithm.lower() == "sha256" and value else None
