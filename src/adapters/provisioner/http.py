"""The platform's ParallelCluster Provisioner over HTTPS (API Gateway, IAM SigV4).

Endpoints (``docs/external-contracts.md`` section 1), query parameters in alphabetical order:

- ``POST /hpc-provisioner/pcluster?include_lustre=...&project_id=P[&tier=T]&vlab_id=V``:
  idempotent; answers ``{"cluster": {clusterName, clusterStatus: CREATE_REQUEST_RECEIVED,
  ssh_user, user_private_ssh_key_arn, admin_private_ssh_key_arn}}``;
- ``GET`` (same path, ``project_id`` and ``vlab_id``): ParallelCluster's DescribeCluster object,
  flat, plus ``vlab_id``, ``project_id`` and ``clusterFsxId``; 404 for an unknown cluster;
- ``DELETE`` (same path and ids).

Every attempt is signed anew with botocore's SigV4 signer (service ``execute-api``), so a retry
never carries a stale ``X-Amz-Date``. Transport errors, 5xx and 429 are retried with bounded
exponential backoff (a ``Retry-After``, in seconds or as a date, is honoured up to
``max_retry_after_seconds``); the provisioner is idempotent for all three calls. What is left
after the retries is ``ServiceUnavailable`` with the status and the provisioner's ``message``
(JSON ``{"message"}``, or the plain text its handlers actually send); a 401/403 is
``ServiceUnavailable`` naming the refused credentials, never retried.

What a GET answer describes is read by ``description.py`` (``status_of``: the statuses, the
head node, the keys, the storage); the client adds what depends on its own calls: the identity
(user and key references) its latest POST answer named for the project, handed to the reading,
and a 404 within ``request_grace_seconds`` of its own POST, which is IN_PROGRESS (the creator
Lambda has not made the stack yet; NOT_FOUND otherwise).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.session import Session

from obp_workflow.core.backoff import retry_after_seconds, retry_wait
from obp_workflow.core.cluster import HostKey, ProvisioningPhase, ProvisioningStatus
from obp_workflow.core.errors import DomainError, ServiceUnavailable
from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.cluster import ClusterProvisioner

from .description import Identity, ProvisionerSettings, identity_of, status_of

log = logging.getLogger(__name__)

PCLUSTER_PATH = "/hpc-provisioner/pcluster"
VERSION_PATH = "/hpc-provisioner/version"
SERVICE = "execute-api"

_MESSAGE_LIMIT = 300
_SAFE = "-_.~"  # the unreserved characters SigV4 leaves unencoded


class CredentialSource(Protocol):
    """botocore ``Credentials`` (refreshable ones included): read frozen at each signature."""

    def get_frozen_credentials(self) -> ReadOnlyCredentials: ...


class _Answer:
    """One HTTP answer, with the provisioner's message read from JSON or plain text."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.text = response.text
        self.json: Any = None
        try:
            self.json = response.json()
        except ValueError:
            self.json = None

    @property
    def message(self) -> str:
        found: object = None
        if isinstance(self.json, dict):
            found = self.json.get("message", self.json.get("Message"))
        text = str(found) if found is not None else self.text
        text = " ".join(text.split())
        return text[:_MESSAGE_LIMIT] + ("..." if len(text) > _MESSAGE_LIMIT else "")


class HttpClusterProvisioner(ClusterProvisioner):
    def __init__(
        self,
        base_url: str,
        *,
        credentials: CredentialSource,
        region: str,
        settings: ProvisionerSettings,
        host_key_for: Callable[[str], HostKey],
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
            raise ValueError(f"invalid provisioner base URL {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.region = region
        self.settings = settings
        self.host_key_for = host_key_for
        self._credentials = credentials
        self._sleep = sleep
        self._monotonic = monotonic
        self._random = random.Random()  # noqa: S311 (jitter, not cryptography)
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(
                settings.read_timeout,
                connect=settings.connect_timeout,
                pool=settings.connect_timeout,
            ),
            follow_redirects=False,
        )
        self._lock = threading.Lock()
        self._identities: dict[ProjectRef, Identity] = {}
        self._requested_at: dict[ProjectRef, float] = {}

    @classmethod
    def from_session(
        cls,
        base_url: str,
        *,
        settings: ProvisionerSettings,
        host_key_for: Callable[[str], HostKey],
        session: Session | None = None,
        region: str | None = None,
    ) -> HttpClusterProvisioner:
        """Credentials (refreshed as they expire) and region from a botocore session."""
        session = session or Session()
        credentials = session.get_credentials()
        if credentials is None:
            raise ValueError("no AWS credentials found to sign the provisioner's requests")
        region = region or session.get_config_variable("region")
        if not region:
            raise ValueError("no AWS region configured for the provisioner")
        return cls(
            base_url,
            credentials=credentials,
            region=str(region),
            settings=settings,
            host_key_for=host_key_for,
        )

    def close(self) -> None:
        self._client.close()

    # ================================================================ the port

    def request(self, project: ProjectRef) -> ProvisioningStatus:
        params = {"include_lustre": "true" if self.settings.include_lustre else "false"}
        if self.settings.tier:
            params["tier"] = self.settings.tier
        answer = self._call("POST", project, params, doing="create the cluster")
        if answer.status != 200:
            raise self._refused(answer, project, "create the cluster")
        cluster = answer.json.get("cluster") if isinstance(answer.json, dict) else None
        if not isinstance(cluster, dict) or not isinstance(cluster.get("clusterName"), str):
            raise ServiceUnavailable(
                f"the cluster provisioner's answer to the request for project {project} has no "
                f"cluster: {answer.message}"
            )
        with self._lock:
            self._identities[project] = identity_of(cluster)
            self._requested_at[project] = self._monotonic()
        try:
            return self.describe(project)
        except ServiceUnavailable as exc:
            said = str(cluster.get("clusterStatus") or "CREATE_REQUEST_RECEIVED")
            return ProvisioningStatus(
                ProvisioningPhase.IN_PROGRESS,
                detail=f"{said} (its description could not be read: {exc.message})",
            )

    def describe(self, project: ProjectRef) -> ProvisioningStatus:
        answer = self._call("GET", project, {}, doing="describe the cluster")
        if answer.status == 404:
            with self._lock:
                asked = self._requested_at.get(project)
            grace = self.settings.request_grace_seconds
            if asked is not None and self._monotonic() - asked < grace:
                return ProvisioningStatus(
                    ProvisioningPhase.IN_PROGRESS,
                    detail="CREATE_REQUEST_RECEIVED (the cluster's stack is not created yet)",
                )
            return ProvisioningStatus(ProvisioningPhase.NOT_FOUND, detail=answer.message)
        if answer.status != 200:
            raise self._refused(answer, project, "describe the cluster")
        described = answer.json
        if not isinstance(described, dict) or not isinstance(described.get("clusterStatus"), str):
            raise ServiceUnavailable(
                f"the cluster provisioner described project {project}'s cluster without a "
                f"clusterStatus: {answer.message}"
            )
        with self._lock:
            self._requested_at.pop(project, None)  # the stack exists: a 404 now means gone
            learned = self._identities.get(project)
        return status_of(
            project, described, self.settings, learned=learned, host_key_for=self.host_key_for
        )

    def delete(self, project: ProjectRef) -> None:
        answer = self._call("DELETE", project, {}, doing="delete the cluster")
        if answer.status not in (200, 202, 204, 404):
            raise self._refused(answer, project, "delete the cluster")
        with self._lock:
            self._requested_at.pop(project, None)
            self._identities.pop(project, None)

    def version(self) -> str:
        """The provisioner's version (a signed GET of ``/hpc-provisioner/version``)."""
        answer = self._send("GET", VERSION_PATH, {}, None, doing="tell its version")
        if answer.status != 200:
            raise self._refused(answer, None, "tell its version")
        if isinstance(answer.json, dict) and "version" in answer.json:
            return str(answer.json["version"])
        return answer.text.strip()

    # ================================================================ HTTP

    def _call(
        self, method: str, project: ProjectRef, extra: Mapping[str, str], *, doing: str
    ) -> _Answer:
        params = {
            **extra,
            "project_id": project.project_id,
            "vlab_id": project.virtual_lab_id,
        }
        return self._send(method, PCLUSTER_PATH, params, project, doing=doing)

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        project: ProjectRef | None,
        *,
        doing: str,
    ) -> _Answer:
        url = self.base_url + path
        if params:
            pairs = sorted(params.items())  # alphabetical, as the provisioner documents
            url += "?" + "&".join(f"{quote(k, _SAFE)}={quote(v, _SAFE)}" for k, v in pairs)
        s = self.settings
        last = ""
        for attempt in range(1, s.max_attempts + 1):
            delay: float | None = None
            try:
                response = self._client.send(self._signed(method, url))
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"[:_MESSAGE_LIMIT]
            else:
                answer = _Answer(response)
                if answer.status in (401, 403):
                    raise ServiceUnavailable(
                        "the provisioner refused the service's credentials "
                        f"({answer.status}: {answer.message}); check the service's IAM role "
                        "and its execute-api:Invoke permission, and the host's clock"
                    )
                if answer.status != 429 and answer.status < 500:
                    return answer
                last = f"{answer.status}: {answer.message}"
                delay = retry_after_seconds(
                    response.headers.get("Retry-After"),
                    datetime.now(UTC),
                    s.max_retry_after_seconds,
                )
            if attempt == s.max_attempts:
                break
            delay = retry_wait(
                attempt, delay, s.backoff_base_seconds, s.backoff_cap_seconds, self._random.uniform
            )
            log.warning(
                "provisioner %s %s: attempt %d/%d failed (%s); retrying in %.2f s",
                method,
                path,
                attempt,
                s.max_attempts,
                last,
                delay,
            )
            self._sleep(delay)
        whose = f" for project {project}" if project is not None else ""
        raise ServiceUnavailable(
            f"the cluster provisioner could not {doing}{whose} after {s.max_attempts} attempts "
            f"(last: {last})"
        )

    def _signed(self, method: str, url: str) -> httpx.Request:
        aws = AWSRequest(method=method, url=url, data=b"", headers={"Accept": "application/json"})
        SigV4Auth(self._credentials.get_frozen_credentials(), SERVICE, self.region).add_auth(aws)
        return self._client.build_request(method, url, headers=dict(aws.headers.items()))

    def _refused(self, answer: _Answer, project: ProjectRef | None, doing: str) -> DomainError:
        whose = f" for project {project}" if project is not None else ""
        return ServiceUnavailable(
            f"the cluster provisioner refused to {doing}{whose} ({answer.status}: {answer.message})"
        )
