"""Blue Brain Nexus Delta v1 over HTTP: settings, retries, and the resource and file calls.

``docs/external-contracts.md`` section 7. What this module knows of Delta:

- Resources: ``PUT /v1/resources/{org}/{project}/_/{id}`` creates (201); with ``?rev=N`` it
  updates (200); ``GET`` fetches (payload + ``_rev``, ``_deprecated``...); ``DELETE ?rev=N``
  deprecates. Ids in paths are IRIs, percent-encoded whole (``/`` included).
- Errors are ``{"@context": ".../error.json", "@type": NAME, "reason": TEXT}``:
  ``ResourceAlreadyExists`` 409, ``IncorrectRev`` 409 (``provided``, ``expected``),
  ``ResourceNotFound``/``FileNotFound``/``ProjectNotFound`` 404, ``AuthenticationFailed`` 401,
  ``AuthorizationFailed`` 403, other rejections 400 (``ResourceIsDeprecated``,
  ``FileIsDeprecated``, ...).
- Since Delta 1.9 an update that changes nothing answers 200 with the CURRENT revision
  (``NoChangeDetected`` is recovered by Delta); older Deltas write a new revision. Both are a
  successful update here.
- Files: multipart with one part named ``file``, ``x-nxs-file-content-length`` (mandatory on S3
  storages) and ``x-nxs-file-metadata`` (JSON); an S3 object is linked with
  ``PUT /v1/link/files/{org}/{project}/{id}?storage=S`` and ``{"path", "mediaType", "metadata"}``
  (Delta >= 1.10) or, ``link_mode="legacy-files"``, ``PUT /v1/files/{org}/{project}/{id}?storage=S``
  and ``{"path", "filename", "mediaType"}`` (Delta <= 1.9).

Every call is retried on transport errors (timeouts, refused or dropped connections), 5xx and
429, with exponential backoff and jitter; 429 and 503 honour ``Retry-After`` (seconds or an HTTP
date, capped). What is left after ``max_attempts`` is ``ServiceUnavailable`` naming the status,
Delta's ``@type`` and ``reason``. A 401/403 is not retried (the service's own token was refused:
a configuration matter). Every Delta refusal is a ``NexusRefusal`` (a ``ServiceUnavailable``:
the application keeps the run where it is and tries again later), carrying the status and
``@type`` for the callers that tell refusals apart.

The bearer token comes from ``token_provider`` (the service's own credentials, never the
caller's), is asked for again at each attempt (so a refreshed token is picked up; after a 401,
a provider with ``invalidate()`` is told to forget its token and the request is sent once more
with a fresh one before the refusal is reported), and never
appears in a log record or an error message: messages are scrubbed of it, and no exception is
chained to an httpx error (whose request carries the header).
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from obp_workflow.core.backoff import retry_after_seconds, retry_wait
from obp_workflow.core.errors import DomainError, ServiceUnavailable
from obp_workflow.core.identity import ProjectRef

log = logging.getLogger(__name__)

_T = TypeVar("_T")

LinkMode = Literal["link", "legacy-files"]
LINK_MODES: tuple[LinkMode, ...] = ("link", "legacy-files")

#: Nexus organisation and project labels.
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MESSAGE_LIMIT = 300
_SAMPLE_PROJECT = ProjectRef(
    "00000000-0000-4000-8000-000000000000", "00000000-0000-4000-8000-000000000001"
)
JSON_LD = "application/ld+json"


@dataclass(frozen=True)
class NexusSettings:
    """Where Nexus is, how the service's data maps onto it, and how patient to be with it."""

    #: Delta's API root, ending in ``/v1`` (e.g. ``https://host/api/nexus/v1``).
    endpoint: str
    #: Each Virtual Lab project has its own private Nexus project: ``project_for`` formats these
    #: with ``{virtual_lab_id}`` and ``{project_id}``; the results must be Nexus labels.
    org_template: str = "{virtual_lab_id}"
    project_template: str = "{project_id}"
    #: Delta's public base (its ``base-uri``), used to write IRIs that Nexus itself mints (user
    #: IRIs, file addresses). None: the endpoint. Differs when the service calls Delta by an
    #: internal address.
    public_base: str | None = None
    #: The Keycloak realm as Nexus names it (user IRIs: ``{public_base}/realms/{realm}/users/{u}``).
    realm: str = "SBO"
    #: The base of the deterministic ids of activities, entities and files.
    id_base: str = "https://openbrainplatform.org/workflow"
    #: The agent the activities are associated with.
    service_agent: str = "https://openbrainplatform.org/workflow/service"
    #: The S3 storage over the Nexus data bucket, for links (None: the project's default storage).
    s3_storage: str | None = None
    #: That storage's bucket: an output synchronised to ``s3://{s3_storage_bucket}/{key}`` (the
    #: Lustre HSM export) is linked as the run's Nexus file at registration. None: outputs in
    #: S3 are recorded by their location only.
    s3_storage_bucket: str | None = None
    #: The storage of direct uploads (None: the project's default storage).
    upload_storage: str | None = None
    #: ``link`` (Delta >= 1.10, ``/v1/link/files``) or ``legacy-files`` (JSON on ``/v1/files``).
    link_mode: LinkMode = "link"
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    #: Read and write timeout of file uploads and links (Delta digests the content first).
    file_timeout: float = 600.0
    max_attempts: int = 5
    backoff_base_seconds: float = 0.5
    backoff_cap_seconds: float = 15.0
    max_retry_after_seconds: float = 60.0
    #: Rounds of "IncorrectRev: fetch the current revision and write again" per write.
    max_conflicts: int = 5
    #: Entities written in parallel by ``register``.
    concurrency: int = 8
    #: Where a non-seekable upload stream is spooled (None: the system's temporary folder).
    spool_dir: str | None = None
    spool_memory_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.query
            or not parts.path.rstrip("/").endswith("/v1")
        ):
            raise ValueError(
                f"invalid Nexus endpoint {self.endpoint!r}: give Delta's API root, ending in /v1"
            )
        if self.link_mode not in LINK_MODES:
            raise ValueError(f"link_mode must be one of {LINK_MODES}, not {self.link_mode!r}")
        if self.max_attempts < 1 or self.max_conflicts < 1 or self.concurrency < 1:
            raise ValueError("max_attempts, max_conflicts and concurrency must be at least 1")
        if min(self.connect_timeout, self.read_timeout, self.file_timeout) <= 0:
            raise ValueError("timeouts must be positive")
        if not self.realm or "/" in self.realm:
            raise ValueError(f"invalid realm {self.realm!r}")
        self.project_for(_SAMPLE_PROJECT)  # a bad template fails here, not at the first run
        if self.s3_storage_bucket is not None and not _BUCKET.fullmatch(self.s3_storage_bucket):
            raise ValueError(f"invalid S3 bucket name {self.s3_storage_bucket!r}")

    def storage_key(self, location: str) -> str | None:
        """The key of ``location`` (``s3://bucket/key``) in the storage's bucket, or None when
        it is elsewhere."""
        if self.s3_storage_bucket is None:
            return None
        prefix = f"s3://{self.s3_storage_bucket}/"
        key = location.removeprefix(prefix)
        return key if key != location and key else None

    @property
    def api(self) -> str:
        return self.endpoint.rstrip("/")

    @property
    def base(self) -> str:
        return (self.public_base or self.endpoint).rstrip("/")

    def project_for(self, project: ProjectRef) -> tuple[str, str]:
        """The Nexus (organisation, project) of a Virtual Lab project."""
        fields = {"virtual_lab_id": project.virtual_lab_id, "project_id": project.project_id}
        try:
            org = self.org_template.format(**fields)
            name = self.project_template.format(**fields)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"invalid Nexus org/project template: {exc}") from None
        for label in (org, name):
            if not _LABEL.fullmatch(label):
                raise ValueError(
                    f"the Nexus org/project templates give {label!r}, which is not a Nexus label "
                    "(1-64 of letters, digits, '_' and '-')"
                )
        return org, name


@dataclass(frozen=True)
class Answer:
    """One answer of Delta, its JSON body read when there is one."""

    status: int
    body: Any
    text: str
    retry_after: float | None = None

    @property
    def type(self) -> str | None:
        found = self.body.get("@type") if isinstance(self.body, dict) else None
        return found if isinstance(found, str) else None

    @property
    def reason(self) -> str:
        found = self.body.get("reason") if isinstance(self.body, dict) else None
        text = str(found) if found is not None else self.text
        return _clip(" ".join(text.split()))

    @property
    def rev(self) -> int:
        found = self.body.get("_rev") if isinstance(self.body, dict) else None
        if not isinstance(found, int):
            raise ServiceUnavailable(f"Nexus answered {self.status} without a revision")
        return found

    def is_(self, status: int, *types: str) -> bool:
        return self.status == status and (not types or self.type in types)

    def describe(self) -> str:
        kind = f" {self.type}" if self.type else ""
        return f"{self.status}{kind}: {self.reason}" if self.reason else f"{self.status}{kind}"


class NexusRefusal(ServiceUnavailable):
    """Delta answered, and it was not the answer the call needed."""

    def __init__(self, message: str, status: int, nexus_type: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.nexus_type = nexus_type


#: A request body: bytes or JSON, or a factory of chunks (called again at each attempt).
Body = bytes | Callable[[], Iterator[bytes]]


class NexusClient:
    """HTTP to Delta with retries; resources by id (fetch, upsert, deprecate); file metadata;
    calls in parallel (``each``)."""

    def __init__(
        self,
        settings: NexusSettings,
        token_provider: Callable[[], str],
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self._token_provider = token_provider
        self._sleep = sleep
        self._random = random.Random()  # noqa: S311 (jitter, not cryptography)
        s = settings
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(
                s.read_timeout, connect=s.connect_timeout, pool=s.connect_timeout
            ),
            follow_redirects=False,
            headers={"Accept": f"{JSON_LD}, application/json", "User-Agent": "obp-workflow"},
        )

    def close(self) -> None:
        self._client.close()

    def each(self, work: Callable[[_T], object], items: Sequence[_T]) -> None:
        """Do ``work`` on every item (``concurrency`` at a time); then raise the first failure,
        if any."""
        if self.settings.concurrency == 1 or len(items) < 2:
            for item in items:
                work(item)
            return
        with ThreadPoolExecutor(min(self.settings.concurrency, len(items))) as pool:
            futures = [pool.submit(work, item) for item in items]
        for future in futures:
            future.result()

    # ================================================================ addresses

    def resource_url(self, org: str, project: str, ident: str) -> str:
        return f"{self.settings.api}/resources/{org}/{project}/_/{_segment(ident)}"

    def file_url(self, org: str, project: str, ident: str) -> str:
        return f"{self.settings.api}/files/{org}/{project}/{_segment(ident)}"

    def link_url(self, org: str, project: str, ident: str) -> str:
        return f"{self.settings.api}/link/files/{org}/{project}/{_segment(ident)}"

    def file_address(self, org: str, project: str, ident: str) -> str:
        """The file's public address (its ``_self`` as Delta writes it)."""
        return f"{self.settings.base}/files/{org}/{project}/{_segment(ident)}"

    # ================================================================ resources

    def fetch(self, org: str, project: str, ident: str) -> dict[str, Any] | None:
        """The resource (payload and metadata), None when it does not exist."""
        answer = self.request("GET", self.resource_url(org, project, ident), doing=f"read {ident}")
        if answer.is_(404, "ResourceNotFound"):
            return None
        if answer.status != 200 or not isinstance(answer.body, dict):
            raise self.refused(answer, f"read {ident} in {org}/{project}")
        return answer.body

    def upsert(self, org: str, project: str, ident: str, payload: Mapping[str, Any]) -> int:
        """Create the resource, or update it at its current revision; its revision after."""
        url = self.resource_url(org, project, ident)
        answer = self.request("PUT", url, json_body=payload, doing=f"create {ident}")
        if answer.status == 201:
            return answer.rev
        if not answer.is_(409, "ResourceAlreadyExists"):
            raise self.refused(answer, f"create {ident} in {org}/{project}")
        for _ in range(self.settings.max_conflicts):
            current = self.fetch(org, project, ident)
            if current is None:
                raise NexusRefusal(
                    f"Nexus said {ident} exists in {org}/{project} but cannot read it",
                    404,
                    "ResourceNotFound",
                )
            if current.get("_deprecated") is True:
                raise NexusRefusal(
                    f"{ident} is deprecated (withdrawn) in Nexus project {org}/{project}; a "
                    "withdrawn registration is not written again",
                    400,
                    "ResourceIsDeprecated",
                )
            rev = _rev_of(current, ident)
            answer = self.request(
                "PUT", url, params={"rev": str(rev)}, json_body=payload, doing=f"update {ident}"
            )
            if answer.status == 200:
                return answer.rev
            if not answer.is_(409, "IncorrectRev"):
                raise self.refused(answer, f"update {ident} in {org}/{project}")
            log.info("nexus: %s changed under us (%s); reading it again", ident, answer.reason)
        raise ServiceUnavailable(
            f"{ident} in Nexus project {org}/{project} kept changing while it was updated "
            f"({self.settings.max_conflicts} tries)"
        )

    def deprecate(self, org: str, project: str, ident: str) -> bool:
        """Deprecate the resource; False when it does not exist or already is (idempotent)."""
        return self._deprecate(
            org,
            project,
            ident,
            url=self.resource_url(org, project, ident),
            read=self.fetch,
            what=ident,
            already=("ResourceIsDeprecated",),
        )

    # ================================================================ files

    def file_metadata(self, org: str, project: str, ident: str) -> dict[str, Any] | None:
        """The file's metadata (``_rev``, ``_digest``, ``_bytes``...), None when absent."""
        answer = self.request(
            "GET",
            self.file_url(org, project, ident),
            headers={"Accept": JSON_LD},
            doing=f"read file {ident}",
        )
        if answer.is_(404, "FileNotFound", "ResourceNotFound"):
            return None
        if answer.status != 200 or not isinstance(answer.body, dict):
            raise self.refused(answer, f"read file {ident} in {org}/{project}")
        return answer.body

    def deprecate_file(self, org: str, project: str, ident: str) -> bool:
        """Deprecate the file; False when it does not exist or already is (idempotent)."""
        return self._deprecate(
            org,
            project,
            ident,
            url=self.file_url(org, project, ident),
            read=self.file_metadata,
            what=f"file {ident}",
            already=("FileIsDeprecated", "ResourceIsDeprecated"),
        )

    def _deprecate(
        self,
        org: str,
        project: str,
        ident: str,
        *,
        url: str,
        read: Callable[[str, str, str], dict[str, Any] | None],
        what: str,
        already: tuple[str, ...],
    ) -> bool:
        """``DELETE ?rev=N`` at the current revision, read again after an ``IncorrectRev``."""
        for _ in range(self.settings.max_conflicts):
            current = read(org, project, ident)
            if current is None or current.get("_deprecated") is True:
                return False
            rev = _rev_of(current, ident)
            answer = self.request(
                "DELETE", url, params={"rev": str(rev)}, doing=f"deprecate {what}"
            )
            if answer.status == 200:
                return True
            if answer.is_(400, *already):
                return False  # an earlier attempt did it; its reply was lost
            if not answer.is_(409, "IncorrectRev"):
                raise self.refused(answer, f"deprecate {what} in {org}/{project}")
        raise ServiceUnavailable(
            f"{what} in Nexus project {org}/{project} kept changing while it was deprecated"
        )

    # ================================================================ HTTP

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        body: Body | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        doing: str,
    ) -> Answer:
        """Send with retries; the first answer that is neither 5xx nor 429.

        ``body`` may be a factory of chunks: it is called again at each attempt, so a streamed
        upload is resent from its start.
        """
        s = self.settings
        path = urlsplit(url).path
        last = ""
        renewed = False
        for attempt in range(1, s.max_attempts + 1):
            token = self._token()
            sent_headers = dict(headers or {})
            sent_headers["Authorization"] = f"Bearer {token}"
            content: bytes | Iterator[bytes] | None = None
            if json_body is not None:
                content = json.dumps(json_body, separators=(",", ":")).encode()
                sent_headers.setdefault("Content-Type", "application/json")
            elif isinstance(body, bytes):
                content = body
            elif body is not None:
                content = body()
            request = self._client.build_request(
                method,
                url,
                params=params,
                headers=sent_headers,
                content=content,
                timeout=(
                    httpx.Timeout(timeout, connect=s.connect_timeout, pool=s.connect_timeout)
                    if timeout is not None
                    else httpx.USE_CLIENT_DEFAULT
                ),
            )
            delay: float | None = None
            try:
                response = self._client.send(request)
            except httpx.TransportError as exc:
                last = _scrub(f"{type(exc).__name__}: {exc}", token)
            else:
                answer = _answer(response, s.max_retry_after_seconds)
                if (
                    answer.status == 401
                    and not renewed
                    and attempt < s.max_attempts
                    and self._renew_token()
                ):
                    renewed = True  # a token Nexus no longer accepts: once with a fresh one
                    continue
                if answer.status in (401, 403):
                    raise NexusRefusal(
                        _scrub(
                            f"Nexus refused the service's credentials to {doing} "
                            f"({answer.describe()}); check the service account's token and its "
                            "permissions on the project",
                            token,
                        ),
                        answer.status,
                        answer.type,
                    )
                if answer.status != 429 and answer.status < 500:
                    return answer
                last = _scrub(answer.describe(), token)
                delay = answer.retry_after
            if attempt == s.max_attempts:
                break
            delay = retry_wait(
                attempt, delay, s.backoff_base_seconds, s.backoff_cap_seconds, self._random.uniform
            )
            log.warning(
                "nexus %s %s: attempt %d/%d failed (%s); retrying in %.2f s",
                method,
                path,
                attempt,
                s.max_attempts,
                last,
                delay,
            )
            self._sleep(delay)
        raise ServiceUnavailable(
            f"Nexus could not {doing} after {s.max_attempts} attempts (last: {last})"
        )

    def refused(self, answer: Answer, doing: str) -> NexusRefusal:
        return NexusRefusal(
            f"Nexus refused to {doing} ({answer.describe()})", answer.status, answer.type
        )

    def _renew_token(self) -> bool:
        """Make the provider forget its token, if it can (``invalidate()``)."""
        invalidate = getattr(self._token_provider, "invalidate", None)
        if not callable(invalidate):
            return False
        invalidate()
        return True

    def _token(self) -> str:
        try:
            token = self._token_provider()
        except DomainError:
            raise  # the service's own errors are written to hold no secret
        except Exception as exc:  # another message could hold a secret: name its type only
            raise ServiceUnavailable(
                f"the service's Nexus token could not be obtained ({type(exc).__name__})"
            ) from None
        if not isinstance(token, str) or not token.strip():
            raise ServiceUnavailable("the service's Nexus token provider gave no token")
        return token.strip()


# ==================================================================== helpers


def _segment(ident: str) -> str:
    """An id as one path segment: every reserved character percent-encoded (``/`` too)."""
    return quote(ident, safe="")


def _rev_of(resource: Mapping[str, Any], ident: str) -> int:
    rev = resource.get("_rev")
    if not isinstance(rev, int):
        raise ServiceUnavailable(f"Nexus described {ident} without a revision")
    return rev


def _answer(response: httpx.Response, retry_after_cap: float) -> Answer:
    text = response.text if response.content else ""
    body: Any = None
    if text:
        try:
            body = json.loads(text)
        except ValueError:
            body = None
    retry_after = None
    if response.status_code in (429, 503):
        retry_after = retry_after_seconds(
            response.headers.get("Retry-After"), datetime.now(UTC), retry_after_cap
        )
    return Answer(response.status_code, body, _clip(text), retry_after)


def _clip(text: str) -> str:
    return text[:_MESSAGE_LIMIT] + ("..." if len(text) > _MESSAGE_LIMIT else "")


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "[token]") if token else text
