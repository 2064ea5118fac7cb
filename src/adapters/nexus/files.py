"""The run's files in Nexus Delta v1: outputs uploaded, S3 objects linked, files read.

A run's output becomes the Nexus file ``{entity}/file`` (``provenance.file_id``) in the run's
Nexus project, with custom metadata naming the run, the output and the Virtual Lab project.

- ``upload_file`` streams one output as multipart with ``x-nxs-file-content-length`` and
  ``x-nxs-file-metadata``; it is idempotent by the file id and the content's SHA-256 (a retried
  upload of the same content finds the file and sends nothing). Content of another length than
  announced, or that Delta digests otherwise, is ``SyncIncomplete``.
- ``link_file`` registers an object already in the Nexus bucket (the Lustre HSM export)
  through ``/v1/link/files`` or, ``link_mode="legacy-files"``, the JSON form of ``/v1/files``;
  idempotent by the file id and the key (and the size, when given).
- ``link_outputs``: the outputs the Lustre HSM exported to the Nexus data bucket
  (``s3://{s3_storage_bucket}/{key}``) linked as the run's files, with the size that was
  synchronised: an object missing or of another size is ``SyncIncomplete`` naming the output,
  so the graph holds them as Nexus holds any file, with the SHA-256 Delta computed.
- ``file_info``: the run's file as Nexus holds it, None when absent or withdrawn.

Each write creates the file, or updates it at its current revision unless it already holds
what is asked (``ResourceAlreadyExists`` reads it, ``IncorrectRev`` reads it again, bounded);
a deprecated (withdrawn) file is never written again.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import secrets
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

import httpx

from obp_workflow.core.errors import ServiceUnavailable, SyncIncomplete
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import SyncedFile

from .client import Answer, NexusClient, NexusRefusal, NexusSettings
from .provenance import file_id, media_type_of

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class NexusFile:
    """A file as Nexus holds it."""

    id: str
    rev: int
    address: str  # the file's ``_self``: where its content is read
    location: str  # ``_location``: where the storage keeps it
    size: int
    digest: str | None  # "sha256:<hex>"
    filename: str
    media_type: str | None

    def synced(self, relative_path: str) -> SyncedFile:
        """The output as the sync outcome records it: located by its Nexus file id."""
        return SyncedFile(relative_path, self.size, self.id, self.digest)


class _SizeMismatch(Exception):
    def __init__(self, expected: int, got: str) -> None:
        super().__init__(f"the stream holds {got} bytes, not the {expected} announced")


class _Source:
    """An upload's content: rewindable (a seekable stream, or spooled), with its SHA-256."""

    def __init__(self, stream: IO[bytes] | Iterable[bytes], size: int, s: NexusSettings) -> None:
        self.size = size
        self.sha256: str | None = None
        self.sent_sha256: str | None = None
        self._owned = False
        read = getattr(stream, "read", None)
        seekable = getattr(stream, "seekable", None)
        if callable(read) and callable(seekable) and seekable():
            self._file: Any = stream
            self._start = int(stream.tell())  # type: ignore[union-attr]
            return
        spool = tempfile.SpooledTemporaryFile(max_size=s.spool_memory_bytes, dir=s.spool_dir)  # noqa: SIM115
        digest, count = hashlib.sha256(), 0
        chunks: Iterable[bytes] = iter(lambda: read(_CHUNK), b"") if callable(read) else stream
        for chunk in chunks:
            digest.update(chunk)
            spool.write(chunk)
            count += len(chunk)
        if count != size:
            spool.close()
            raise _SizeMismatch(size, str(count))
        spool.seek(0)
        self._file, self._start, self._owned = spool, 0, True
        self.sha256 = digest.hexdigest()

    def digest(self) -> str:
        if self.sha256 is None:
            digest = hashlib.sha256()
            for chunk in self.chunks():
                digest.update(chunk)
            self.sha256 = digest.hexdigest()
        return self.sha256

    def chunks(self) -> Iterator[bytes]:
        """Exactly ``size`` bytes from the start; a stream of another length raises before its
        last byte is sent, so Delta never receives a complete body of the wrong content."""
        self._file.seek(self._start)
        digest, remaining = hashlib.sha256(), self.size
        while remaining > 0:
            chunk = self._file.read(min(_CHUNK, remaining))
            if not chunk:
                raise _SizeMismatch(self.size, str(self.size - remaining))
            remaining -= len(chunk)
            if remaining == 0 and self._file.read(1):
                raise _SizeMismatch(self.size, "more than")
            digest.update(chunk)
            yield chunk
        self.sent_sha256 = digest.hexdigest()

    def close(self) -> None:
        if self._owned:
            self._file.close()


class NexusRunFiles:
    """The run's files on Nexus Delta v1 with the service's own token (for the synchronizers
    and the registration)."""

    def __init__(
        self,
        settings: NexusSettings,
        token_provider: Callable[[], str],
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.nexus = NexusClient(settings, token_provider, transport=transport, sleep=sleep)

    def close(self) -> None:
        self.nexus.close()

    def project_for(self, project: ProjectRef) -> tuple[str, str]:
        return self.settings.project_for(project)

    def file_id(self, project: ProjectRef, run_id: str, relative_path: str) -> str:
        return file_id(self.settings.id_base, project, run_id, relative_path)

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
        """Stream one output into Nexus as the run's file for ``relative_path``.

        ``stream``: a binary file (seekable ones are read in place and rewound for a retry) or
        an iterable of chunks (spooled, to a temporary file beyond ``spool_memory_bytes``).
        ``digest`` ("sha256:<hex>"), when the caller knows it, spares reading the content to
        compare it with a file already there. The same content uploaded again is not sent
        again; another content updates the file (a new revision). Content of another length
        than ``size``, or that Delta digests otherwise, is ``SyncIncomplete``.
        """
        if size < 0:
            raise ValueError("size must not be negative")
        t = self._target(run, relative_path, media_type)
        known = _hex_of(digest)
        try:
            source = _Source(stream, size, self.settings)
        except _SizeMismatch as exc:
            raise SyncIncomplete([relative_path], f"{relative_path}: {exc}") from None

        def holds_it(current: dict[str, Any]) -> bool:
            stored = _stored_sha256(current)
            return (
                stored is not None
                and current.get("_bytes") == size
                and stored == (known or source.digest())
            )

        try:
            return self._put_file(
                t,
                "uploaded",
                send=lambda rev: self._send_file(t, rev, source),
                holds_it=holds_it,
                written=lambda body: self._uploaded(t, body, source, known),
                refused=lambda answer: self.nexus.refused(answer, t.doing("upload")),
            )
        except _SizeMismatch as exc:
            raise SyncIncomplete([relative_path], f"{relative_path}: {exc}") from None
        finally:
            source.close()

    def file_info(self, run: RunHeader, relative_path: str) -> NexusFile | None:
        """The run's file for ``relative_path`` as Nexus holds it (size, and SHA-256 digest when
        Delta computed one), or None when there is none or it is deprecated (withdrawn)."""
        t = self._target(run, relative_path, None)
        existing = self.nexus.file_metadata(t.org, t.project, t.ident)
        if existing is None or existing.get("_deprecated") is True:
            return None
        return _file_of(existing, t.ident, t.address)

    def link_file(
        self,
        run: RunHeader,
        relative_path: str,
        s3_key: str,
        media_type: str | None = None,
        *,
        size: int | None = None,
    ) -> NexusFile:
        """Register an object of the Nexus bucket (key relative to the bucket's root) as the
        run's file for ``relative_path``; idempotent by the file id and the key (and ``size``,
        when given: an object that changed is linked again). A key that is not in the bucket
        is ``SyncIncomplete``."""
        t = self._target(run, relative_path, media_type)
        return self._put_file(
            t,
            "linked",
            send=lambda rev: self._send_link(t, rev, s3_key),
            holds_it=lambda current: (
                _links_to(current, s3_key) and (size is None or current.get("_bytes") == size)
            ),
            written=lambda body: _file_of(body, t.ident, t.address),
            refused=lambda answer: self._link_refused(t, answer, s3_key),
        )

    def link_outputs(
        self, header: RunHeader, files: Sequence[SyncedFile]
    ) -> list[NexusFile | None]:
        """Link every output of the Nexus data bucket (in parallel); outputs that cannot be
        linked are named together in one ``SyncIncomplete``."""
        results: list[NexusFile | None] = [None] * len(files)
        offending: list[str] = []
        reasons: list[str] = []

        def link(index: int) -> None:
            try:
                results[index] = self._link_output(header, files[index])
            except SyncIncomplete as exc:
                offending.extend(exc.offending)
                reasons.append(exc.message)

        self.nexus.each(
            link, [i for i, f in enumerate(files) if self.settings.storage_key(f.location)]
        )
        if offending:
            raise SyncIncomplete(sorted(offending), "; ".join(sorted(reasons)))
        return results

    def _link_output(self, header: RunHeader, file: SyncedFile) -> NexusFile | None:
        """Link an output in the Nexus data bucket (``s3_storage_bucket``) as the run's Nexus
        file; None for an output elsewhere (recorded by its location only). An object that
        is not in the bucket, or not of the size synchronised, is ``SyncIncomplete``."""
        key = self.settings.storage_key(file.location)
        if key is None:
            return None
        linked = self.link_file(header, file.relative_path, key, size=file.size)
        if linked.size != file.size:
            raise SyncIncomplete(
                [file.relative_path],
                f"{file.relative_path}: the object {key!r} holds {linked.size} bytes, not the "
                f"{file.size} bytes that were synchronised",
            )
        return linked

    # ================================================================ plumbing

    def _target(self, run: RunHeader, relative_path: str, media_type: str | None) -> _Target:
        org, project = self.project_for(run.project)
        ident = self.file_id(run.project, run.run_id, relative_path)
        return _Target(
            org,
            project,
            ident,
            run,
            relative_path,
            media_type or media_type_of(relative_path),
            self.nexus.file_address(org, project, ident),
        )

    def _put_file(
        self,
        t: _Target,
        verb: str,
        *,
        send: Callable[[int | None], Answer],
        holds_it: Callable[[dict[str, Any]], bool],
        written: Callable[[Any], NexusFile],
        refused: Callable[[Answer], Exception],
    ) -> NexusFile:
        """Create the run's file, or update it at its current revision unless it already
        ``holds_it``: ``ResourceAlreadyExists`` reads it, ``IncorrectRev`` reads it again."""
        existing = self.nexus.file_metadata(t.org, t.project, t.ident)
        if existing is None:
            answer = send(None)
            if answer.status == 201:
                return written(answer.body)
            if not answer.is_(409, "ResourceAlreadyExists"):
                raise refused(answer)
            existing = self.nexus.file_metadata(t.org, t.project, t.ident)
        for _ in range(self.settings.max_conflicts):
            current = t.usable(existing)
            if holds_it(current):
                return _file_of(current, t.ident, t.address)
            answer = send(_rev(current, t.ident))
            if answer.status == 200:
                return written(answer.body)
            if not answer.is_(409, "IncorrectRev"):
                raise refused(answer)
            existing = self.nexus.file_metadata(t.org, t.project, t.ident)
        raise ServiceUnavailable(f"Nexus file {t.ident} kept changing while it was {verb}")

    def _send_file(self, t: _Target, rev: int | None, source: _Source) -> Answer:
        boundary = secrets.token_hex(16)
        head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{_quoted(t.name)}"\r\n'
            f"Content-Type: {t.media}\r\n\r\n"
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()

        def body() -> Iterator[bytes]:
            yield head
            yield from source.chunks()
            yield tail

        return self.nexus.request(
            "PUT",
            self.nexus.file_url(t.org, t.project, t.ident),
            params=_params(rev, self.settings.upload_storage),
            body=body,
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + source.size + len(tail)),
                "x-nxs-file-content-length": str(source.size),
                "x-nxs-file-metadata": json.dumps(t.metadata(), separators=(",", ":")),
            },
            timeout=self.settings.file_timeout,
            doing=t.doing("upload"),
        )

    def _send_link(self, t: _Target, rev: int | None, s3_key: str) -> Answer:
        if self.settings.link_mode == "link":
            url = self.nexus.link_url(t.org, t.project, t.ident)
            payload: dict[str, Any] = {"path": s3_key, "mediaType": t.media}
            payload["metadata"] = t.metadata()
        else:
            url = self.nexus.file_url(t.org, t.project, t.ident)
            payload = {"path": s3_key, "filename": t.name, "mediaType": t.media}
        return self.nexus.request(
            "PUT",
            url,
            params=_params(rev, self.settings.s3_storage),
            json_body=payload,
            timeout=self.settings.file_timeout,
            doing=t.doing("link"),
        )

    def _uploaded(self, t: _Target, body: Any, source: _Source, known: str | None) -> NexusFile:
        if not isinstance(body, dict):
            raise ServiceUnavailable(f"Nexus answered without JSON to {t.doing('upload')}")
        stored = _stored_sha256(body)
        sent = source.sent_sha256 or known
        if body.get("_bytes") != source.size or (stored is not None and stored != sent):
            raise SyncIncomplete(
                [t.relative_path],
                f"{t.relative_path}: Nexus stored {body.get('_bytes')} bytes with SHA-256 "
                f"{stored}, not the {source.size} bytes with SHA-256 {sent} that were sent",
            )
        return _file_of(body, t.ident, t.address)

    def _link_refused(self, t: _Target, answer: Answer, s3_key: str) -> Exception:
        if answer.type == "FileNotFound" and 400 <= answer.status < 500:
            return SyncIncomplete(
                [t.relative_path],
                f"{t.relative_path}: the object {s3_key!r} is not in the storage's bucket "
                f"({answer.describe()})",
            )
        refusal = self.nexus.refused(answer, t.doing(f"link ({self.settings.link_mode})"))
        if (
            answer.status in (404, 405)
            and self.settings.link_mode == "link"
            and answer.type not in ("ProjectNotFound", "StorageNotFound")
        ):
            return NexusRefusal(
                f"{refusal.message}; Delta before 1.10 has no /v1/link/files: set "
                "link_mode='legacy-files' for it",
                answer.status,
                answer.type,
            )
        return refusal


@dataclass(frozen=True)
class _Target:
    """The Nexus file a run's output becomes."""

    org: str
    project: str
    ident: str
    run: RunHeader
    relative_path: str
    media: str
    address: str

    @property
    def name(self) -> str:
        return posixpath.basename(self.relative_path)

    def doing(self, verb: str) -> str:
        return f"{verb} {self.relative_path} of run {self.run.run_id}"

    def metadata(self) -> dict[str, Any]:
        """The file's custom metadata (``x-nxs-file-metadata``, or ``metadata`` of a link)."""
        return {
            "name": self.name,
            "description": f"Output {self.relative_path} of run {self.run.run_id}",
            "keywords": {
                "runId": self.run.run_id,
                "relativePath": self.relative_path,
                "virtualLabId": self.run.project.virtual_lab_id,
                "projectId": self.run.project.project_id,
            },
        }

    def usable(self, existing: dict[str, Any] | None) -> dict[str, Any]:
        """The file found at this id, if it may be written again."""
        where = f"{self.org}/{self.project}"
        if existing is None:
            raise NexusRefusal(
                f"Nexus said file {self.ident} exists in {where} but cannot read it",
                404,
                "FileNotFound",
            )
        if existing.get("_deprecated") is True:
            raise NexusRefusal(
                f"file {self.ident} is deprecated (withdrawn) in Nexus project {where}; it is "
                "not written again",
                400,
                "FileIsDeprecated",
            )
        return existing


# ==================================================================== helpers


def _rev(metadata: Mapping[str, Any], ident: str) -> int:
    rev = metadata.get("_rev")
    if not isinstance(rev, int):
        raise ServiceUnavailable(f"Nexus described file {ident} without a revision")
    return rev


def _stored_sha256(metadata: Mapping[str, Any]) -> str | None:
    digest = metadata.get("_digest")
    if not isinstance(digest, dict) or digest.get("_algorithm") != "SHA-256":
        return None
    value = digest.get("_value")
    return value.lower() if isinstance(value, str) and value else None


def _hex_of(digest: str | None) -> str | None:
    if digest is None:
        return None
    algorithm, _, value = digest.partition(":")
    return value.lower() if algorithm.lower() == "sha256" and value else None


def _file_of(metadata: Any, ident: str, address: str) -> NexusFile:
    if not isinstance(metadata, dict):
        raise ServiceUnavailable(f"Nexus described file {ident} without JSON")
    stored = _stored_sha256(metadata)
    digest = f"sha256:{stored}" if stored else None
    size = metadata.get("_bytes")
    return NexusFile(
        id=str(metadata.get("@id") or ident),
        rev=_rev(metadata, ident),
        address=str(metadata.get("_self") or address),
        location=str(metadata.get("_location") or ""),
        size=size if isinstance(size, int) else -1,
        digest=digest,
        filename=str(metadata.get("_filename") or ""),
        media_type=media if isinstance(media := metadata.get("_mediaType"), str) else None,
    )


def _links_to(metadata: Mapping[str, Any], s3_key: str) -> bool:
    """Whether the file is the object at ``s3_key`` (Delta >= 1.10 writes the key as
    ``_location``; older ones a URL of the object, which ends with it)."""
    location = str(metadata.get("_location") or "")
    return location == s3_key or location.endswith("/" + s3_key)


def _params(rev: int | None, storage: str | None) -> dict[str, str] | None:
    params = {}
    if rev is not None:
        params["rev"] = str(rev)
    if storage:
        params["storage"] = storage
    return params or None


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
