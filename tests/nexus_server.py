"""A faithful stand-in for Blue Brain Nexus Delta v1, over real HTTP.

One reusable server for this API (``docs/external-contracts.md`` section 7, and Delta's own
response bodies in ``tests/data/nexus/``, matched field by field): a stdlib
``ThreadingHTTPServer`` on 127.0.0.1, port 0, in a thread, speaking HTTP/1.1 with keep-alive.

Every request needs ``Authorization: Bearer <token>`` of a known token (``TOKEN`` by default),
or one that ``tokens``, when it is a callable, authenticates (e.g. a test Keycloak realm's):
otherwise 401 ``AuthenticationFailed``. Projects must exist (``create_project``): otherwise 404
``ProjectNotFound``. Errors are Delta's bodies: ``{"@context": ".../contexts/error.json",
"@type", "reason"}`` (``IncorrectRev`` with ``provided`` and ``expected``).

Resources (schema segment ``_``; ids are percent-encoded IRIs, or segments expanded against the
project's base ``{base}/resources/{org}/{project}/_/``):

- ``PUT .../{id}`` creates (201; ``ResourceAlreadyExists`` 409), ``PUT .../{id}?rev=N`` updates
  (200; ``ResourceNotFound`` 404, ``IncorrectRev`` 409, ``ResourceIsDeprecated`` 400); ``POST
  /v1/resources/{org}/{project}[/_]`` creates with the payload's ``@id`` or a fresh one;
  ``GET .../{id}[?rev=|?tag=]`` (payload + metadata, ``RevisionNotFound``/``TagNotFound`` 404),
  ``GET .../{id}/source``; ``DELETE .../{id}?rev=N`` deprecates; ``POST .../{id}/tags?rev=N``
  ``{"tag", "rev"}`` tags (201). Create and update answer the metadata only (``@context``
  metadata.json, ``@id``, expanded ``@type``, ``_self``, ``_constrainedBy``, ``_project``,
  ``_rev``, ``_deprecated``, ``_createdAt``, ``_createdBy``, ``_updatedAt``, ``_updatedBy``).
- Payloads: keys starting with ``_`` are refused, an ``@id`` must match the path's, and a remote
  ``@context`` that is not one of Nexus's own is refused (Delta resolves no arbitrary URL).
  ``@type`` is expanded against the inline context (terms, ``prefix:suffix``, ``@vocab``).
- ``detect_no_change`` (default, Delta >= 1.9): an update that changes nothing answers 200 with
  the current revision and writes nothing (Delta's recovered ``NoChangeDetected``); off, every
  update writes a revision (older Deltas).
- Listing ``GET /v1/resources/{org}/{project}?type=&size=&from=&after=&deprecated=``:
  ``_total``, ``_results`` (metadata of each, files included), ``_next`` (``after=[seq, id]``).

Files (``/v1/files/{org}/{project}[/{id}]``): multipart with a ``file`` part; ``?storage=``
picks a storage (``StorageNotFound`` 404), default ``diskStorageDefault`` (content in memory)
unless ``default_storage`` names an S3 one. S3 storages (``s3_storages``: id -> bucket, backed by
the boto3 client ``s3``, e.g. on moto) need ``x-nxs-file-content-length``
(``FileContentLengthIsMissing`` 400) and keep the content in the bucket.
``x-nxs-file-metadata`` (JSON ``name``, ``description``, ``keywords``) is recorded. Answers carry
``_bytes``, ``_digest{_algorithm: SHA-256, _value}``, ``_filename``, ``_location``,
``_mediaType``, ``_origin``, ``_storage{@id, @type, _rev}``, ``_uuid``. ``GET`` answers the
metadata for an ``Accept`` of JSON(-LD), the content otherwise. The JSON form of ``PUT/POST
/v1/files`` (``{path, filename?, mediaType?}``, Delta <= 1.9) links an S3 object
(``_origin: Storage``); ``PUT/POST /v1/link/files/{org}/{project}[/{id}]?storage=S`` with
``{path, mediaType?, metadata?}`` (Delta >= 1.10, ``link_endpoint``) links it with
``_origin: Link`` and ``_location`` the key. The object must exist (HEAD on the bucket; else 404
``FileNotFound``); its size and SHA-256 are read from the bucket.

Faults (``fail_next`` 5xx, ``throttle_next`` 429 with ``Retry-After``, ``slow_next`` a delay
before handling, ``lose_reply_next`` the request is handled, its write done, then the connection
is dropped without a reply; ``pass_next`` a gap; ``interfere_next`` another writer acting just
before the request), each for the next N requests, optionally only those a ``match`` (method,
path as sent: ids still percent-encoded) accepts. ``reset()`` empties the data (projects,
tokens and settings stay); a request still sleeping in a slow fault when the server is reset
writes nothing.
Every request is recorded (never its token).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mimetypes
import posixpath
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from botocore.exceptions import ClientError

NEXUS = "https://bluebrain.github.io/nexus"
ERROR_CONTEXT = f"{NEXUS}/contexts/error.json"
METADATA_CONTEXT = f"{NEXUS}/contexts/metadata.json"
FILES_CONTEXT = f"{NEXUS}/contexts/files.json"
SEARCH_CONTEXT = f"{NEXUS}/contexts/search.json"
SEARCH_METADATA_CONTEXT = f"{NEXUS}/contexts/search-metadata.json"
UNCONSTRAINED = f"{NEXUS}/schemas/unconstrained.json"
FILES_SCHEMA = f"{NEXUS}/schemas/files.json"
NXV = f"{NEXUS}/vocabulary/"
DISK_DEFAULT = f"{NXV}diskStorageDefault"
#: Contexts Delta resolves itself; any other remote context is refused.
KNOWN_CONTEXTS = frozenset(
    {METADATA_CONTEXT, FILES_CONTEXT, SEARCH_CONTEXT, SEARCH_METADATA_CONTEXT, ERROR_CONTEXT}
)

TOKEN = "nexus-test-token-3fa1c9d2e8b74f06"  # a test credential
SERVICE_USER = "obp-workflow-service"
REALM = "test"
MAX_PAGE = 2000
#: One parameter of a Content-Disposition header: name="quoted \"value\"" or name=token.
_PARAM = re.compile(r';\s*([\w*-]+)=(?:"((?:[^"\\]|\\.)*)"|([^;]*))')


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str  # as sent (ids percent-encoded)
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names; never Authorization
    user: str | None  # whom the token authenticated, None when refused
    status: int | None  # None: the reply was lost
    size: int
    json: Any = None


@dataclass
class _Fault:
    kind: str  # "status", "throttle", "slow", "lose", "pass", "interfere"
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.0
    match: Callable[[str, str], bool] | None = None
    action: Callable[[], object] | None = None


@dataclass
class _FileState:
    data: bytes | None  # None: in the S3 bucket at ``location``
    size: int
    digest: str
    filename: str
    media_type: str
    location: str
    origin: str
    storage_id: str
    storage_type: str
    uuid: str
    custom: dict[str, Any] = field(default_factory=dict)  # name, description, keywords


@dataclass
class _Entry:
    kind: str  # "resource" or "file"
    id: str
    org: str
    project: str
    seq: int
    created_at: str
    created_by: str
    rev: int = 1
    deprecated: bool = False
    updated_at: str = ""
    updated_by: str = ""
    types: list[str] = field(default_factory=list)
    history: dict[int, Any] = field(default_factory=dict)  # rev -> source or _FileState
    tags: dict[str, int] = field(default_factory=dict)

    @property
    def current(self) -> Any:
        return self.history[self.rev]


class _Reply(Exception):
    """An answer decided deep in a handler (an error, mostly)."""

    def __init__(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def _error(status: int, kind: str, reason: str, **extra: Any) -> _Reply:
    return _Reply(status, {"@context": ERROR_CONTEXT, "@type": kind, "reason": reason, **extra})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NexusServer:
    def __init__(
        self,
        *,
        tokens: Mapping[str, str] | Callable[[str], str | None] | None = None,
        base_uri: str | None = None,
        s3: Any = None,
        s3_storages: Mapping[str, str] | None = None,
        default_storage: str | None = None,
        detect_no_change: bool = True,
        link_endpoint: bool = True,
    ) -> None:
        #: Whom each bearer token authenticates: known tokens (mutable), or, when ``tokens``
        #: is a callable, whom it says (e.g. a realm checking its own tokens).
        self.tokens: dict[str, str] = {}
        self.authenticate: Callable[[str], str | None] = self._known
        if callable(tokens):
            self.authenticate = tokens
        else:
            self.tokens.update(tokens if tokens is not None else {TOKEN: SERVICE_USER})
        self.s3 = s3
        self.s3_storages = dict(s3_storages or {})
        self.default_storage = default_storage
        self.detect_no_change = detect_no_change
        self.link_endpoint = link_endpoint
        self.projects: set[tuple[str, str]] = set()
        self.requests: list[Recorded] = []
        self.creations = 0  # resources (not files) ever created
        self.file_creations = 0
        self._entries: dict[tuple[str, str], dict[str, _Entry]] = {}
        self._faults: list[_Fault] = []
        self._seq = 0
        self._epoch = 0
        self._in_flight = 0
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._httpd = _Httpd(("127.0.0.1", 0), _Handler, self)
        self._base_uri = base_uri
        self._thread = threading.Thread(
            target=lambda: self._httpd.serve_forever(poll_interval=0.05),
            name="nexus-server",
            daemon=True,
        )

    # ---------------------------------------------------------------- life

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def endpoint(self) -> str:
        """Delta's API root, as the adapter is configured with it."""
        return self.url + "/v1"

    @property
    def base(self) -> str:
        """Delta's ``base-uri``: the prefix of the IRIs it mints."""
        return (self._base_uri or self.endpoint).rstrip("/")

    def start(self) -> NexusServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def reset(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()
            self._faults.clear()
            self.requests.clear()
            self.creations = 0
            self.file_creations = 0

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no request is being handled (a slow one included)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the Nexus test server is still handling requests")
                self._idle.wait(left)

    # ---------------------------------------------------------------- test controls

    def _known(self, token: str) -> str | None:
        return self.tokens.get(token)

    def create_project(self, org: str, project: str) -> None:
        with self._lock:
            self.projects.add((org, project))

    def fail_next(
        self, times: int = 1, status: int = 503, match: Callable[[str, str], bool] | None = None
    ) -> None:
        self._add(times, _Fault("status", status=status, match=match))

    def throttle_next(
        self,
        times: int = 1,
        retry_after: str | None = "1",
        match: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._add(times, _Fault("throttle", status=429, retry_after=retry_after, match=match))

    def slow_next(
        self, times: int = 1, delay: float = 1.0, match: Callable[[str, str], bool] | None = None
    ) -> None:
        self._add(times, _Fault("slow", delay=delay, match=match))

    def lose_reply_next(
        self, times: int = 1, match: Callable[[str, str], bool] | None = None
    ) -> None:
        """The next requests are handled (their writes done), then dropped without a reply."""
        self._add(times, _Fault("lose", match=match))

    def pass_next(self, times: int = 1) -> None:
        """The next requests are served normally (a gap in a sequence of faults)."""
        self._add(times, _Fault("pass"))

    def interfere_next(
        self, action: Callable[[], object], match: Callable[[str, str], bool], times: int = 1
    ) -> None:
        """Run ``action`` (e.g. ``write_behind``: another writer) just before serving the next
        request ``match`` accepts."""
        self._add(times, _Fault("interfere", match=match, action=action))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def write_behind(self, org: str, project: str, ident: str, source: dict[str, Any]) -> int:
        """Create or update a resource behind the adapter's back (another writer)."""
        with self._lock:
            entry = self._entries.setdefault((org, project), {}).get(ident)
            if entry is None:
                self._create_entry("resource", org, project, ident, source, "someone-else")
                return 1
            self._new_revision(entry, source, "someone-else")
            return entry.rev

    # ---------------------------------------------------------------- inspection

    def entry(self, ident: str) -> _Entry | None:
        with self._lock:
            for entries in self._entries.values():
                if ident in entries:
                    return entries[ident]
        return None

    def source(self, ident: str) -> dict[str, Any] | None:
        found = self.entry(ident)
        return found.current if found is not None and found.kind == "resource" else None

    def revision(self, ident: str) -> int | None:
        found = self.entry(ident)
        return None if found is None else found.rev

    def deprecated(self, ident: str) -> bool:
        found = self.entry(ident)
        return found is not None and found.deprecated

    def sources(self) -> dict[str, dict[str, Any]]:
        """Every resource's payload (its source, without metadata) by id."""
        with self._lock:
            return {
                e.id: e.current
                for entries in self._entries.values()
                for e in entries.values()
                if e.kind == "resource"
            }

    def files(self) -> dict[str, _FileState]:
        with self._lock:
            return {
                e.id: e.current
                for entries in self._entries.values()
                for e in entries.values()
                if e.kind == "file"
            }

    def file_content(self, ident: str) -> bytes | None:
        found = self.entry(ident)
        if found is None or found.kind != "file":
            return None
        return self._content(found.current)

    # ================================================================ internals

    def _add(self, times: int, fault: _Fault) -> None:
        with self._lock:
            self._faults.extend(_Fault(**fault.__dict__) for _ in range(times))

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.match is None or fault.match(method, path):
                    return self._faults.pop(i)
        return None

    def _enter(self) -> int:
        with self._lock:
            self._in_flight += 1
            return self._epoch

    def _leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    # ---------------------------------------------------------------- dispatch

    def handle(
        self,
        method: str,
        raw_path: str,
        query: dict[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
        user: str,
    ) -> tuple[int, Any, dict[str, str]]:
        """One authenticated request: (status, JSON body or bytes, extra headers)."""
        segments = [unquote(s) for s in raw_path.split("/")[1:]]
        try:
            with self._lock:
                return self._route(method, segments, query, headers, body, user)
        except _Reply as reply:
            return reply.status, reply.body, reply.headers

    def _route(
        self,
        method: str,
        seg: list[str],
        query: dict[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
        user: str,
    ) -> tuple[int, Any, dict[str, str]]:
        if seg[:1] != ["v1"]:
            raise _not_a_route()
        rest = seg[1:]
        if rest == ["version"] and method == "GET":
            return 200, self._version(), {}
        if rest[:1] == ["resources"] and len(rest) >= 3:
            org, proj = rest[1], rest[2]
            self._project(org, proj)
            tail = rest[3:]
            if not tail:
                if method == "GET":
                    return 200, self._list(org, proj, query), {}
                if method == "POST":
                    return self._create(org, proj, None, _json(body), query, user)
                raise _not_allowed()
            if tail[0] != "_":
                raise _error(
                    404,
                    "SchemaNotFound",
                    f"Schema '{tail[0]}' not found in project '{org}/{proj}'.",
                )
            if len(tail) == 1:
                if method == "POST":
                    return self._create(org, proj, None, _json(body), query, user)
                raise _not_allowed()
            ident = self._expand(tail[1], org, proj)
            if len(tail) == 2:
                if method == "PUT":
                    if "rev" in query:
                        return self._update(org, proj, ident, _json(body), query, user)
                    return self._create(org, proj, ident, _json(body), query, user)
                if method == "GET":
                    return 200, self._fetch(org, proj, ident, query), {}
                if method == "DELETE":
                    return self._deprecate(org, proj, ident, query, user, "resource")
                raise _not_allowed()
            if len(tail) == 3 and tail[2] == "source" and method == "GET":
                return 200, self._at(self._resource(org, proj, ident), query)[1], {}
            if len(tail) == 3 and tail[2] == "tags" and method == "POST":
                return self._tag(org, proj, ident, _json(body), query, user)
            raise _not_a_route()
        if rest[:1] == ["files"] and len(rest) in (3, 4):
            org, proj = rest[1], rest[2]
            self._project(org, proj)
            given = self._expand(rest[3], org, proj) if len(rest) == 4 else None
            if method == "GET" and given is not None:
                return self._get_file(org, proj, given, query, headers)
            if method == "DELETE" and given is not None:
                return self._deprecate(org, proj, given, query, user, "file")
            if (method, given is None) in (("PUT", False), ("POST", True)):
                ident = given or self._fresh_id(org, proj)
                if headers.get("content-type", "").startswith("multipart/form-data"):
                    return self._upload(org, proj, ident, query, headers, body, user)
                return self._link(org, proj, ident, query, _json(body), user, legacy=True)
            raise _not_allowed()
        if rest[:2] == ["link", "files"] and len(rest) in (4, 5) and self.link_endpoint:
            org, proj = rest[2], rest[3]
            self._project(org, proj)
            given = self._expand(rest[4], org, proj) if len(rest) == 5 else None
            if (method, given is None) in (("PUT", False), ("POST", True)):
                ident = given or self._fresh_id(org, proj)
                return self._link(org, proj, ident, query, _json(body), user, legacy=False)
            raise _not_allowed()
        raise _not_a_route()

    # ---------------------------------------------------------------- resources

    def _create(
        self,
        org: str,
        proj: str,
        ident: str | None,
        payload: Any,
        query: dict[str, list[str]],
        user: str,
    ) -> tuple[int, Any, dict[str, str]]:
        source = self._check_payload(payload, org, proj, ident)
        if ident is None:
            given = source.get("@id")
            ident = self._expand(given, org, proj) if isinstance(given, str) else None
            ident = ident or self._fresh_id(org, proj)
        if ident in self._entries.setdefault((org, proj), {}):
            raise _error(
                409,
                "ResourceAlreadyExists",
                f"Resource '{ident}' already exists in project '{org}/{proj}'.",
            )
        entry = self._create_entry("resource", org, proj, ident, source, user)
        tag = _one(query, "tag")
        if tag:
            entry.tags[tag] = 1
        return 201, self._metadata_answer(entry), {}

    def _update(
        self,
        org: str,
        proj: str,
        ident: str,
        payload: Any,
        query: dict[str, list[str]],
        user: str,
    ) -> tuple[int, Any, dict[str, str]]:
        rev = _rev_param(query)
        entry = self._resource(org, proj, ident)
        _check_rev(entry, rev)
        if entry.deprecated:
            raise _error(400, "ResourceIsDeprecated", f"Resource '{ident}' is deprecated.")
        source = self._check_payload(payload, org, proj, ident)
        tag = _one(query, "tag")
        if self.detect_no_change and source == entry.current:
            if tag and entry.tags.get(tag) != entry.rev:  # Delta tags the current revision
                target = entry.rev
                self._new_revision(entry, entry.current, user)
                entry.tags[tag] = target
            return 200, self._metadata_answer(entry), {}
        self._new_revision(entry, source, user)
        if tag:
            entry.tags[tag] = entry.rev
        return 200, self._metadata_answer(entry), {}

    def _fetch(self, org: str, proj: str, ident: str, query: dict[str, list[str]]) -> Any:
        entry = self._resource(org, proj, ident)
        rev, source = self._at(entry, query)
        contexts: list[Any] = [METADATA_CONTEXT]
        given = source.get("@context")
        if isinstance(given, list):
            contexts.extend(given)
        elif given is not None:
            contexts.append(given)
        metadata = self._metadata(entry, rev)
        metadata.pop("@type", None)
        payload = {k: v for k, v in source.items() if k != "@context"}
        return {"@context": contexts, **payload, **metadata}

    def _tag(
        self,
        org: str,
        proj: str,
        ident: str,
        payload: Any,
        query: dict[str, list[str]],
        user: str,
    ) -> tuple[int, Any, dict[str, str]]:
        rev = _rev_param(query)
        entry = self._resource(org, proj, ident)
        _check_rev(entry, rev)
        if not isinstance(payload, dict) or not isinstance(payload.get("tag"), str):
            raise _error(400, "MalformedRequestContent", "The payload needs 'tag' and 'rev'.")
        target = payload.get("rev")
        if not isinstance(target, int) or not 0 < target <= entry.rev:
            raise _error(
                404,
                "RevisionNotFound",
                f"Revision requested '{target}' not found, last known revision is '{entry.rev}'.",
            )
        if not (self.detect_no_change and entry.tags.get(payload["tag"]) == target):
            self._new_revision(entry, entry.current, user)
            entry.tags[payload["tag"]] = target
        return 201, self._metadata_answer(entry), {}

    def _deprecate(
        self,
        org: str,
        proj: str,
        ident: str,
        query: dict[str, list[str]],
        user: str,
        kind: str,
    ) -> tuple[int, Any, dict[str, str]]:
        rev = _rev_param(query)
        entry = (
            self._resource(org, proj, ident) if kind == "resource" else self._file(org, proj, ident)
        )
        _check_rev(entry, rev)
        if entry.deprecated:
            name = "ResourceIsDeprecated" if kind == "resource" else "FileIsDeprecated"
            label = "Resource" if kind == "resource" else "File"
            raise _error(400, name, f"{label} '{ident}' is deprecated.")
        self._new_revision(entry, entry.current, user)
        entry.deprecated = True
        if kind == "file":
            return 200, self._file_answer(entry), {}
        return 200, self._metadata_answer(entry), {}

    def _list(self, org: str, proj: str, query: dict[str, list[str]]) -> Any:
        size = _int_param(query, "size", 20)
        offset = _int_param(query, "from", 0)
        if not 1 <= size <= MAX_PAGE or offset < 0 or offset + size > 10_000:
            raise _error(400, "MalformedQueryParam", "size must be 1-2000, from + size <= 10000.")
        types = query.get("type", [])
        wanted_deprecated = _one(query, "deprecated")
        found = sorted(self._entries.get((org, proj), {}).values(), key=lambda e: (e.seq, e.id))
        found = [
            e
            for e in found
            if all(t in e.types for t in types)
            and (wanted_deprecated is None or str(e.deprecated).lower() == wanted_deprecated)
        ]
        after = _one(query, "after")
        if after is not None:
            try:
                seq, last = json.loads(after)
            except (ValueError, TypeError):
                raise _error(400, "MalformedQueryParam", "'after' must be [seq, id].") from None
            offset = next(
                (i + 1 for i, e in enumerate(found) if (e.seq, e.id) == (seq, last)), len(found)
            )
        page = found[offset : offset + size]
        answer: dict[str, Any] = {
            "@context": [METADATA_CONTEXT, SEARCH_CONTEXT, SEARCH_METADATA_CONTEXT],
            "_total": len(found),
            "_results": [
                self._file_metadata(e) if e.kind == "file" else self._metadata(e, e.rev)
                for e in page
            ],
        }
        if offset + size < len(found) and page:
            last_entry = page[-1]
            cursor = quote(json.dumps([last_entry.seq, last_entry.id], separators=(",", ":")))
            extra = "".join(f"&type={quote(t, safe='')}" for t in types)
            answer["_next"] = (
                f"{self.base}/resources/{org}/{proj}?size={size}&after={cursor}{extra}"
            )
        return answer

    # ---------------------------------------------------------------- files

    def _upload(
        self,
        org: str,
        proj: str,
        ident: str,
        query: dict[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
        user: str,
    ) -> tuple[int, Any, dict[str, str]]:
        storage_id, bucket = self._storage(org, proj, _one(query, "storage"))
        content_type = headers.get("content-type", "")
        boundary = re.search(r'boundary="?([^";]+)"?', content_type)
        if boundary is None:
            raise _error(400, "MalformedRequestContent", "The multipart boundary is missing.")
        part = next(
            (p for p in _multipart(body, boundary.group(1).encode()) if p[0].get("name") == "file"),
            None,
        )
        if part is None:
            raise _error(
                400,
                "InvalidMultipartFieldName",
                f"File '{ident}' payload a Multipart/Form-Data without a 'file' part.",
            )
        disposition, data = part
        declared = headers.get("x-nxs-file-content-length")
        if bucket is not None and declared is None:
            raise _error(
                400,
                "FileContentLengthIsMissing",
                "'x-nxs-file-content-length' must be supplied when uploading a file to a S3 "
                "storage.",
            )
        if declared is not None and declared != str(len(data)):
            raise _error(
                400,
                "UnexpectedSaveError",
                f"File cannot be saved for unexpected reasons. Details 'x-nxs-file-content-length"
                f" {declared} but the content has {len(data)} bytes'",
            )
        filename = disposition.get("filename") or "file"
        media = disposition.get("content-type") or _guess(filename)
        file_uuid = str(uuid.uuid4())
        if bucket is not None:
            location = f"{org}/{proj}/files/{'/'.join(file_uuid.replace('-', '')[:8])}/{filename}"
            self._s3().put_object(Bucket=bucket, Key=location, Body=data)
            stored = None
        else:
            location = (
                f"file:///tmp/nexus/{org}/{proj}/{'/'.join(file_uuid.replace('-', '')[:8])}/"
                f"{filename}"
            )
            stored = data
        state = _FileState(
            stored,
            len(data),
            hashlib.sha256(data).hexdigest(),
            filename,
            media,
            location,
            "Client",
            storage_id,
            "S3Storage" if bucket is not None else "DiskStorage",
            file_uuid,
            _custom_metadata(headers.get("x-nxs-file-metadata")),
        )
        return self._write_file(org, proj, ident, state, query, user)

    def _link(
        self,
        org: str,
        proj: str,
        ident: str,
        query: dict[str, list[str]],
        payload: Any,
        user: str,
        *,
        legacy: bool,
    ) -> tuple[int, Any, dict[str, str]]:
        storage_id, bucket = self._storage(org, proj, _one(query, "storage"))
        if not isinstance(payload, dict) or not isinstance(payload.get("path"), str):
            raise _error(400, "MalformedRequestContent", "A link needs a 'path'.")
        if bucket is None:
            raise _error(
                400,
                "UnsupportedOperation",
                f"Linking a file is not supported for storages of type '{NXV}DiskStorage'",
            )
        key = payload["path"].lstrip("/")
        name = payload.get("filename") if legacy else None
        filename = name or posixpath.basename(key)
        if not filename:
            raise _error(
                400, "InvalidPath", f"An S3 path must contain at least the filename. Path was {key}"
            )
        try:
            head = self._s3().head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise _error(
                    404, "FileNotFound", f"File could not be retrieved from expected path '{key}'."
                ) from None
            raise
        data = self._s3().get_object(Bucket=bucket, Key=key)["Body"].read()
        media = payload.get("mediaType") or _guess(filename)
        custom = payload.get("metadata") if not legacy else None
        state = _FileState(
            None,
            int(head["ContentLength"]),
            hashlib.sha256(data).hexdigest(),
            filename,
            media,
            f"https://{bucket}.s3.amazonaws.com/{key}" if legacy else key,
            "Storage" if legacy else "Link",
            storage_id,
            "S3Storage",
            str(uuid.uuid4()),
            dict(custom) if isinstance(custom, dict) else {},
        )
        state.custom["_bucket"] = bucket
        state.custom["_key"] = key
        return self._write_file(org, proj, ident, state, query, user)

    def _write_file(
        self,
        org: str,
        proj: str,
        ident: str,
        state: _FileState,
        query: dict[str, list[str]],
        user: str,
    ) -> tuple[int, Any, dict[str, str]]:
        entries = self._entries.setdefault((org, proj), {})
        if "rev" not in query:
            if ident in entries:
                raise _error(
                    409,
                    "ResourceAlreadyExists",
                    f"Resource '{ident}' already exists in project '{org}/{proj}'.",
                )
            entry = self._create_entry("file", org, proj, ident, state, user)
            tag = _one(query, "tag")
            if tag:
                entry.tags[tag] = 1
            return 201, self._file_answer(entry), {}
        rev = _rev_param(query)
        entry = self._file(org, proj, ident)
        _check_rev(entry, rev, noun="file")
        if entry.deprecated:
            raise _error(400, "FileIsDeprecated", f"File '{ident}' is deprecated.")
        self._new_revision(entry, state, user)
        return 200, self._file_answer(entry), {}

    def _get_file(
        self,
        org: str,
        proj: str,
        ident: str,
        query: dict[str, list[str]],
        headers: Mapping[str, str],
    ) -> tuple[int, Any, dict[str, str]]:
        entry = self._file(org, proj, ident)
        rev, state = self._at(entry, query)
        accept = headers.get("accept", "*/*")
        if "application/ld+json" in accept or "application/json" in accept:
            return 200, self._file_answer(entry, rev), {}
        return (
            200,
            self._content(state),
            {
                "Content-Type": state.media_type,
                "Content-Disposition": f'attachment; filename="{state.filename}"',
            },
        )

    # ---------------------------------------------------------------- state

    def _create_entry(
        self, kind: str, org: str, proj: str, ident: str, content: Any, user: str
    ) -> _Entry:
        self._seq += 1
        now = _now()
        by = self._user_iri(user)
        entry = _Entry(kind, ident, org, proj, self._seq, now, by, updated_at=now, updated_by=by)
        entry.history[1] = content
        entry.types = self._types(content, org, proj) if kind == "resource" else [f"{NXV}File"]
        self._entries.setdefault((org, proj), {})[ident] = entry
        if kind == "resource":
            self.creations += 1
        else:
            self.file_creations += 1
        return entry

    def _new_revision(self, entry: _Entry, content: Any, user: str) -> None:
        entry.rev += 1
        entry.history[entry.rev] = content
        entry.updated_at = _now()
        entry.updated_by = self._user_iri(user)
        if entry.kind == "resource":
            entry.types = self._types(content, entry.org, entry.project)

    def _resource(self, org: str, proj: str, ident: str) -> _Entry:
        entry = self._entries.get((org, proj), {}).get(ident)
        if entry is None or entry.kind != "resource":
            raise _error(
                404, "ResourceNotFound", f"Resource '{ident}' not found in project '{org}/{proj}'."
            )
        return entry

    def _file(self, org: str, proj: str, ident: str) -> _Entry:
        entry = self._entries.get((org, proj), {}).get(ident)
        if entry is None or entry.kind != "file":
            raise _error(
                404, "FileNotFound", f"File '{ident}' not found in project '{org}/{proj}'."
            )
        return entry

    def _at(self, entry: _Entry, query: dict[str, list[str]]) -> tuple[int, Any]:
        rev, tag = _one(query, "rev"), _one(query, "tag")
        if rev is not None and tag is not None:
            raise _error(400, "MalformedQueryParam", "'rev' and 'tag' cannot be given together.")
        if rev is not None:
            wanted = _rev_param(query)
            if wanted not in entry.history:
                raise _error(
                    404,
                    "RevisionNotFound",
                    f"Revision requested '{wanted}' not found, last known revision is "
                    f"'{entry.rev}'.",
                )
            return wanted, entry.history[wanted]
        if tag is not None:
            if tag not in entry.tags:
                raise _error(404, "TagNotFound", f"Tag requested '{tag}' not found.")
            return entry.tags[tag], entry.history[entry.tags[tag]]
        return entry.rev, entry.current

    def _project(self, org: str, proj: str) -> None:
        if (org, proj) not in self.projects:
            raise _error(404, "ProjectNotFound", f"Project '{org}/{proj}' not found.")

    def _storage(self, org: str, proj: str, given: str | None) -> tuple[str, str | None]:
        """The storage's @id and, for an S3 storage, its bucket."""
        wanted = given or self.default_storage
        if wanted is None or wanted in (
            DISK_DEFAULT,
            "diskStorageDefault",
            "nxv:diskStorageDefault",
        ):
            return DISK_DEFAULT, None
        for sid, bucket in self.s3_storages.items():
            if wanted in (sid, self._expand(sid, org, proj)):
                return self._expand(sid, org, proj), bucket
        raise _error(
            404, "StorageNotFound", f"Storage '{wanted}' not found in project '{org}/{proj}'."
        )

    def _s3(self) -> Any:
        if self.s3 is None:
            raise _error(500, "UnexpectedError", "the test server has no S3 client")
        return self.s3

    def _content(self, state: _FileState) -> bytes:
        if state.data is not None:
            return state.data
        bucket = state.custom.get("_bucket")
        key = state.custom.get("_key", state.location)
        if bucket is None:
            bucket = next(iter(self.s3_storages.values()))
        return bytes(self._s3().get_object(Bucket=bucket, Key=key)["Body"].read())

    # ---------------------------------------------------------------- JSON-LD and metadata

    def _check_payload(
        self, payload: Any, org: str, proj: str, ident: str | None
    ) -> dict[str, Any]:
        if not isinstance(payload, dict):
            raise _error(400, "MalformedRequestContent", "The payload must be a JSON object.")
        reserved = sorted(k for k in payload if k.startswith("_"))
        if reserved:
            raise _error(
                400,
                "InvalidJsonLdFormat",
                f"Payload keys beginning with '_' are reserved for Nexus metadata: {reserved}.",
            )
        given = payload.get("@id")
        if ident is not None and isinstance(given, str) and self._expand(given, org, proj) != ident:
            raise _error(
                400,
                "UnexpectedResourceId",
                f"The provided id '{ident}' does not match the id '{given}' in the payload.",
            )
        for context in _contexts(payload.get("@context")):
            if isinstance(context, str) and context not in KNOWN_CONTEXTS:
                raise _error(
                    400,
                    "InvalidJsonLdFormat",
                    f"Remote context '{context}' could not be resolved in project '{org}/{proj}'.",
                )
        return payload

    def _types(self, source: Any, org: str, proj: str) -> list[str]:
        given = source.get("@type") if isinstance(source, dict) else None
        names = given if isinstance(given, list) else [given] if isinstance(given, str) else []
        terms: dict[str, Any] = {}
        for context in _contexts(source.get("@context") if isinstance(source, dict) else None):
            if isinstance(context, dict):
                terms.update(context)
        vocab = terms.get("@vocab") or f"{self.base}/vocabs/{org}/{proj}/"
        return [_expand_term(str(n), terms, str(vocab)) for n in names]

    def _expand(self, segment: str, org: str, proj: str) -> str:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", segment) or segment.startswith("urn:"):
            return segment
        if segment.startswith("nxv:"):
            return NXV + segment[4:]
        return f"{self.base}/resources/{org}/{proj}/_/{segment}"

    def _fresh_id(self, org: str, proj: str) -> str:
        return f"{self.base}/resources/{org}/{proj}/_/{uuid.uuid4()}"

    def _user_iri(self, user: str) -> str:
        return f"{self.base}/realms/{REALM}/users/{user}"

    def _metadata(self, entry: _Entry, rev: int) -> dict[str, Any]:
        types = (
            entry.types
            if rev == entry.rev
            else self._types(entry.history[rev], entry.org, entry.project)
        )
        return {
            "@id": entry.id,
            "@type": types[0] if len(types) == 1 else types,
            "_self": f"{self.base}/resources/{entry.org}/{entry.project}/_/"
            f"{quote(entry.id, safe='')}",
            "_constrainedBy": UNCONSTRAINED,
            "_project": f"{entry.org}/{entry.project}",
            "_rev": rev,
            "_deprecated": entry.deprecated,
            "_createdAt": entry.created_at,
            "_createdBy": entry.created_by,
            "_updatedAt": entry.updated_at,
            "_updatedBy": entry.updated_by,
        }

    def _metadata_answer(self, entry: _Entry) -> dict[str, Any]:
        return {"@context": METADATA_CONTEXT, **self._metadata(entry, entry.rev)}

    def _file_metadata(self, entry: _Entry, rev: int | None = None) -> dict[str, Any]:
        rev = entry.rev if rev is None else rev
        state: _FileState = entry.history[rev]
        custom = {k: v for k, v in state.custom.items() if not k.startswith("_")}
        found: dict[str, Any] = {"@id": entry.id, "@type": "File"}
        for key in ("name", "description"):
            if isinstance(custom.get(key), str):
                found[key] = custom[key]
        found.update(
            {
                "_bytes": state.size,
                "_constrainedBy": FILES_SCHEMA,
                "_createdAt": entry.created_at,
                "_createdBy": entry.created_by,
                "_deprecated": entry.deprecated,
                "_digest": {"_algorithm": "SHA-256", "_value": state.digest},
                "_filename": state.filename,
            }
        )
        if isinstance(custom.get("keywords"), dict):
            found["_keywords"] = custom["keywords"]
        found.update(
            {
                "_location": state.location,
                "_mediaType": state.media_type,
                "_origin": state.origin,
                "_project": f"{entry.org}/{entry.project}",
                "_rev": rev,
                "_self": f"{self.base}/files/{entry.org}/{entry.project}/"
                f"{quote(entry.id, safe='')}",
                "_storage": {"@id": state.storage_id, "@type": state.storage_type, "_rev": 1},
                "_updatedAt": entry.updated_at,
                "_updatedBy": entry.updated_by,
                "_uuid": state.uuid,
            }
        )
        return found

    def _file_answer(self, entry: _Entry, rev: int | None = None) -> dict[str, Any]:
        return {"@context": [FILES_CONTEXT, METADATA_CONTEXT], **self._file_metadata(entry, rev)}

    def _version(self) -> dict[str, Any]:
        return {
            "@context": f"{NEXUS}/contexts/version.json",
            "delta": "1.10.0" if self.link_endpoint else "1.9.0",
            "dependencies": {"postgres": "15.5", "elasticsearch": "8.13.0"},
            "plugins": {"storage": "1.10.0"},
            "environment": "test",
        }


# ==================================================================== HTTP


class _Httpd(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], owner: NexusServer
    ) -> None:
        super().__init__(address, handler)
        self.owner = owner

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away (timeout, lost reply) is part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "NexusDeltaTest/1.10"
    server: _Httpd

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes: without this, Nagle holds the second.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self, method: str) -> None:
        owner = self.server.owner
        epoch = owner._enter()
        try:
            self._serve_one(owner, method, epoch)
        finally:
            owner._leave()

    def _serve_one(self, owner: NexusServer, method: str, epoch: int) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() != "authorization"}
        body = self._body()
        if body is None:  # the client gave up while sending: nothing happens
            self._drop()
            return
        fault = owner._take_fault(method, parts.path)

        def record(status: int | None, user: str | None, data: Any = None) -> None:
            owner._record(
                Recorded(method, parts.path, query, headers, user, status, len(body), data)
            )

        parsed = _maybe_json(headers, body)
        if fault is not None and fault.kind == "slow":
            time.sleep(fault.delay)
        if fault is not None and fault.action is not None:
            fault.action()
        if fault is not None and fault.kind in ("status", "throttle"):
            record(fault.status, None, parsed)
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            if fault.status == 500:
                reply: Any = {
                    "@context": ERROR_CONTEXT,
                    "@type": "UnexpectedError",
                    "reason": "An unexpected error occurred. Please try again later.",
                }
            else:
                reply = f"<html><body>{fault.status} (test fault)</body></html>".encode()
                extra["Content-Type"] = "text/html"
            self._reply(fault.status, reply, extra)
            return
        with owner._lock:
            if epoch != owner._epoch:  # reset while this request slept: it never happened
                self._drop()
                return
        user = owner.authenticate(_bearer(self.headers.get("Authorization")))
        if user is None:
            record(401, None, parsed)
            self._reply(
                401,
                {
                    "@context": ERROR_CONTEXT,
                    "@type": "AuthenticationFailed",
                    "reason": "The supplied authentication is invalid.",
                },
                {},
            )
            return
        status, reply, extra = owner.handle(method, parts.path, query, headers, body, user)
        if fault is not None and fault.kind == "lose":
            record(None, user, parsed)
            self._drop()
            return
        record(status, user, parsed)
        self._reply(status, reply, extra)

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline()
                if not line:
                    return None
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    return None
                chunks.append(chunk)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        return data if len(data) == length else None

    def _reply(self, status: int, body: Any, headers: Mapping[str, str]) -> None:
        if isinstance(body, bytes):
            data = body
            content_type = headers.get("Content-Type", "application/octet-stream")
        else:
            data = json.dumps(body).encode()
            content_type = "application/ld+json"
        try:
            self.send_response(status)
            for name, value in headers.items():
                if name != "Content-Type":
                    self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


# ==================================================================== helpers


def _not_a_route() -> _Reply:
    return _error(404, "NotFound", "The requested resource could not be found.")


def _not_allowed() -> _Reply:
    return _error(405, "MethodNotSupported", "The requested method is not supported here.")


def _bearer(header: str | None) -> str:
    if header and header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    return ""


def _json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        raise _error(400, "MalformedRequestContent", "The request content is not JSON.") from None


def _maybe_json(headers: Mapping[str, str], body: bytes) -> Any:
    if "json" not in headers.get("content-type", "") or not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _one(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _int_param(query: Mapping[str, list[str]], name: str, default: int) -> int:
    raw = _one(query, name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise _error(400, "MalformedQueryParam", f"'{name}' must be a number.") from None


def _rev_param(query: Mapping[str, list[str]]) -> int:
    raw = _one(query, "rev")
    if raw is None:
        raise _error(400, "MissingQueryParam", "Request is missing required query parameter 'rev'.")
    try:
        rev = int(raw)
    except ValueError:
        raise _error(400, "MalformedQueryParam", "'rev' must be a number.") from None
    if rev < 1:
        raise _error(400, "MalformedQueryParam", "'rev' must be positive.")
    return rev


def _check_rev(entry: _Entry, provided: int, noun: str = "resource") -> None:
    if provided != entry.rev:
        raise _error(
            409,
            "IncorrectRev",
            f"Incorrect revision '{provided}' provided, expected '{entry.rev}', the {noun} may "
            "have been updated since last seen.",
            provided=provided,
            expected=entry.rev,
        )


def _contexts(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _expand_term(name: str, terms: Mapping[str, Any], vocab: str) -> str:
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", name):
        return name
    if name in terms:
        value = terms[name]
        target = value.get("@id") if isinstance(value, dict) else value
        if isinstance(target, str) and target != name:
            return _expand_term(target, terms, vocab)
    prefix, colon, suffix = name.partition(":")
    if colon and prefix in terms and isinstance(terms[prefix], str):
        return str(terms[prefix]) + suffix
    return vocab + name


def _guess(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _custom_metadata(raw: str | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        found = json.loads(raw)
    except ValueError:
        raise _error(
            400, "InvalidCustomMetadata", "'x-nxs-file-metadata' must be a JSON object."
        ) from None
    if not isinstance(found, dict):
        raise _error(400, "InvalidCustomMetadata", "'x-nxs-file-metadata' must be a JSON object.")
    return {k: v for k, v in found.items() if k in ("name", "description", "keywords")}


def _multipart(body: bytes, boundary: bytes) -> Iterable[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body: (lower-case header params of each, its content)."""
    delimiter = b"--" + boundary
    position = body.find(delimiter)
    if position < 0:
        raise _error(400, "MalformedRequestContent", "The multipart body has no part.")
    position += len(delimiter)
    parts: list[tuple[dict[str, str], bytes]] = []
    while body[position : position + 2] != b"--":
        if body[position : position + 2] != b"\r\n":
            raise _error(400, "MalformedRequestContent", "The multipart body is malformed.")
        position += 2
        end = body.find(b"\r\n" + delimiter, position)
        if end < 0:
            raise _error(400, "MalformedRequestContent", "The multipart body is not closed.")
        raw_headers, _, content = body[position:end].partition(b"\r\n\r\n")
        params: dict[str, str] = {}
        for line in raw_headers.decode("utf-8", "replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                params["content-type"] = value.strip()
            elif name.strip().lower() == "content-disposition":
                for key, quoted, plain in _PARAM.findall(value):
                    text = quoted or plain
                    params[key.lower()] = text.replace('\\"', '"').replace("\\\\", "\\")
        parts.append((params, content))
        position = end + 2 + len(delimiter)
    return parts
