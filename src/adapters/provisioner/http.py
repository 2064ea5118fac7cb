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

Statuses (``clusterStatus``) and what ``describe`` makes of them:

==============================================  ===========  =================================
clusterStatus                                   phase        notes
==============================================  ===========  =================================
CREATE_COMPLETE, UPDATE_COMPLETE                READY        with a ClusterHandle (*)
CREATE_FAILED                                   FAILED       detail: ``failures`` reasons
DELETE_IN_PROGRESS, DELETE_FAILED,              FAILED       the cluster is going or broken
DELETE_COMPLETE (any ``DELETE_*``)
CREATE_IN_PROGRESS, UPDATE_IN_PROGRESS,         IN_PROGRESS
CREATE_REQUEST_RECEIVED, UPDATE_FAILED,
anything unknown
404 within ``request_grace_seconds`` of our     IN_PROGRESS  the creator Lambda has not made
own POST                                                     the stack yet
404 otherwise                                   NOT_FOUND
==============================================  ===========  =================================

(*) READY needs a usable head node (address present, state ``running`` when given) and a host
key; a complete cluster without them is IN_PROGRESS or UNKNOWN with the reason as detail, never
FAILED. A description naming another project than the one asked for is UNKNOWN, never READY.

What the GET object does not carry, and where the handle gets it:

- ``ssh_user`` and the SSH key references come only in POST answers. The adapter remembers the
  ones of its latest POST per project (the provisioner's own word: ARNs); without one (e.g. after
  a restart) it uses the settings: ``ssh_user`` (default ``sim``, the user the provisioner
  creates) and the secret-name templates ``user_key_template`` / ``admin_key_template``
  (defaults ``{cluster_name}_sim`` and ``{cluster_name}``: the provisioner stores each private
  key in Secrets Manager under its EC2 key-pair name, and Secrets Manager resolves a name as
  well as an ARN). An older answer with a single ``private_ssh_key_arn`` serves both roles; the
  transitional ``admin_user_private_ssh_key_arn`` is read as the admin key.
- The head node's SSH host key is in no answer of the provisioner. The adapter takes
  ``host_key_for(cluster_name) -> "<type> <base64>"`` from the composition root and refuses
  READY without it (UNKNOWN, with the lookup's DomainError as detail; a ServiceUnavailable from
  the lookup propagates). Production choice: ``host_key_from_secrets(secret_store)`` reads the
  secret ``{cluster_name}-host-key``, to be written by the head node's configure step (an
  ``OnNodeConfigured`` script publishing ``/etc/ssh/ssh_host_ed25519_key.pub``: a change the
  provisioner does not make today). The key is never learned on first use.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from botocore.session import Session

from obp_workflow.core.backoff import retry_after_seconds, retry_wait
from obp_workflow.core.cluster import (
    ClusterHandle,
    LustreStorage,
    ProvisioningPhase,
    ProvisioningStatus,
    SecretRef,
    SharedStorage,
    Storage,
)
from obp_workflow.core.errors import DomainError, ServiceUnavailable
from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.cluster import ClusterProvisioner
from obp_workflow.ports.secrets import SecretStore

log = logging.getLogger(__name__)

PCLUSTER_PATH = "/hpc-provisioner/pcluster"
VERSION_PATH = "/hpc-provisioner/version"
SERVICE = "execute-api"

READY_STATUSES = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE"})
FAILED_STATUSES = frozenset({"CREATE_FAILED"})  # and every DELETE_*
_MESSAGE_LIMIT = 300
_SAFE = "-_.~"  # the unreserved characters SigV4 leaves unencoded


class CredentialSource(Protocol):
    """botocore ``Credentials`` (refreshable ones included): read frozen at each signature."""

    def get_frozen_credentials(self) -> ReadOnlyCredentials: ...


@dataclass(frozen=True)
class ProvisionerSettings:
    """How to call the provisioner and how to read its clusters. Templates use ``str.format``."""

    # ------------------------------------------------------------ what is asked for
    include_lustre: bool = True
    tier: str | None = None  # e.g. "debug"; not sent when None
    # ------------------------------------------------------------ the head node
    address: Literal["private", "public"] = "private"
    ssh_port: int = 22
    #: Used when no POST answer of this process named the user (the GET object does not).
    ssh_user: str = "sim"
    #: The login of the admin key: the head node's EC2 key pair, the AMI's default user
    #: (alinux2023: ec2-user). None: the same as ``ssh_user``.
    admin_user: str | None = "ec2-user"
    #: Secret names of the keys when no POST answer gave their ARNs ({cluster_name}, {vlab_id},
    #: {project_id}). None: unknown, the cluster is not READY until a request names them.
    user_key_template: str | None = "{cluster_name}_sim"
    admin_key_template: str | None = "{cluster_name}"
    partition: str | None = None
    account: str | None = None
    # ------------------------------------------------------------ storage
    lustre_mount: str = "/obi/data"
    lustre_dra_path: str = "/project"  # the Nexus-DRA's file-system path
    lustre_bucket: str = ""  # the Nexus data bucket behind the Nexus-DRA
    lustre_prefix: str = ""
    #: {dra_root}, {vlab_id}, {project_id}, {ssh_user}, {cluster_name}
    lustre_runs_root: str = "{dra_root}/{vlab_id}/{project_id}/runs"
    shared_path: str = "/sbo/home"
    #: {shared_path}, {vlab_id}, {project_id}, {ssh_user}, {cluster_name}
    shared_runs_root: str = "{shared_path}/{ssh_user}/runs"
    # ------------------------------------------------------------ HTTP
    connect_timeout: float = 5.0
    read_timeout: float = 30.0  # API Gateway's integration timeout is 29 s
    max_attempts: int = 4
    backoff_base_seconds: float = 0.5
    backoff_cap_seconds: float = 8.0
    max_retry_after_seconds: float = 30.0
    #: After our POST, a 404 means "the creator Lambda has not made the stack yet" this long.
    request_grace_seconds: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not 0 < self.ssh_port < 65536:
            raise ValueError(f"invalid ssh_port {self.ssh_port}")
        if self.include_lustre and not self.lustre_bucket:
            raise ValueError("lustre_bucket (the Nexus data bucket) is needed with include_lustre")
        if min(self.connect_timeout, self.read_timeout) <= 0:
            raise ValueError("timeouts must be positive")


@dataclass(frozen=True)
class _Identity:
    """What a POST answer said about how to log in to the project's cluster."""

    cluster_name: str
    ssh_user: str | None
    user_key: str | None
    admin_key: str | None


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


def host_key_from_secrets(
    secrets: SecretStore, template: str = "{cluster_name}-host-key"
) -> Callable[[str], str]:
    """The production ``host_key_for``: the head node's public host key from a secret."""

    def host_key_for(cluster_name: str) -> str:
        return secrets.get(SecretRef(template.format(cluster_name=cluster_name))).reveal().strip()

    return host_key_for


def phase_of(cluster_status: str) -> ProvisioningPhase:
    """READY, FAILED or IN_PROGRESS: an unknown status is never a failure."""
    if cluster_status in READY_STATUSES:
        return ProvisioningPhase.READY
    if cluster_status in FAILED_STATUSES or cluster_status.startswith("DELETE_"):
        return ProvisioningPhase.FAILED
    return ProvisioningPhase.IN_PROGRESS


class HttpClusterProvisioner(ClusterProvisioner):
    def __init__(
        self,
        base_url: str,
        *,
        credentials: CredentialSource,
        region: str,
        settings: ProvisionerSettings,
        host_key_for: Callable[[str], str],
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
        self._identities: dict[ProjectRef, _Identity] = {}
        self._requested_at: dict[ProjectRef, float] = {}

    @classmethod
    def from_session(
        cls,
        base_url: str,
        *,
        settings: ProvisionerSettings,
        host_key_for: Callable[[str], str],
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
            self._identities[project] = _identity_of(cluster)
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
        return self._status_of(project, described)

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

    # ================================================================ mapping

    def _status_of(self, project: ProjectRef, described: Mapping[str, Any]) -> ProvisioningStatus:
        status = str(described["clusterStatus"])
        for field, expected in (
            ("vlab_id", project.virtual_lab_id),
            ("project_id", project.project_id),
        ):
            given = described.get(field)
            if given is not None and str(given).lower() != expected:
                return ProvisioningStatus(
                    ProvisioningPhase.UNKNOWN,
                    detail=f"{status}, but the provisioner described {field} {given!r}",
                )
        phase = phase_of(status)
        if phase is ProvisioningPhase.FAILED:
            return ProvisioningStatus(phase, detail=_failure_detail(status, described))
        if phase is ProvisioningPhase.IN_PROGRESS:
            return ProvisioningStatus(phase, detail=status)
        return self._ready(project, status, described)

    def _ready(
        self, project: ProjectRef, status: str, described: Mapping[str, Any]
    ) -> ProvisioningStatus:
        s = self.settings
        name = described.get("clusterName")
        if not isinstance(name, str) or not name:
            return _unknown(status, "the description has no clusterName")
        head = described.get("headNode")
        if not isinstance(head, dict):
            return ProvisioningStatus(
                ProvisioningPhase.IN_PROGRESS, detail=f"{status} (no head node described yet)"
            )
        state = head.get("state")
        if state is not None and state != "running":
            return ProvisioningStatus(
                ProvisioningPhase.IN_PROGRESS, detail=f"{status} (head node {state})"
            )
        host = head.get("privateIpAddress" if s.address == "private" else "publicIpAddress")
        if not isinstance(host, str) or not host:
            return ProvisioningStatus(
                ProvisioningPhase.IN_PROGRESS,
                detail=f"{status} (the head node has no {s.address} address)",
            )
        with self._lock:
            learned = self._identities.get(project)
        if learned is not None and learned.cluster_name != name:
            learned = None
        fields = {"cluster_name": name, "vlab_id": project.virtual_lab_id}
        fields["project_id"] = project.project_id
        known = learned or _Identity(name, None, None, None)
        user_key = known.user_key or _format(s.user_key_template, fields)
        admin_key = known.admin_key or _format(s.admin_key_template, fields)
        if not user_key or not admin_key:
            return _unknown(status, "the cluster's SSH key references are unknown: request it")
        ssh_user = known.ssh_user or s.ssh_user
        try:
            host_key = self.host_key_for(name)
        except ServiceUnavailable:
            raise
        except DomainError as exc:
            return _unknown(status, f"the head node's host key is not available: {exc.message}")
        storage, runs_root = self._storage(project, name, ssh_user, described.get("clusterFsxId"))
        if storage is None:
            return _unknown(status, runs_root)
        try:
            handle = ClusterHandle(
                name=name,
                host=host,
                port=s.ssh_port,
                ssh_user=ssh_user,
                user_key=SecretRef(user_key),
                admin_key=SecretRef(admin_key),
                host_key=host_key,
                storage=storage,
                runs_root=runs_root,
                admin_user=s.admin_user,
                partition=s.partition,
                account=s.account,
            )
        except ValueError as exc:
            return _unknown(status, f"the cluster cannot be used: {exc}")
        return ProvisioningStatus(ProvisioningPhase.READY, handle, status)

    def _storage(
        self, project: ProjectRef, name: str, ssh_user: str, fsx_id: object
    ) -> tuple[Storage | None, str]:
        """The storage and runs root, or (None, why not)."""
        s = self.settings
        fields = {
            "vlab_id": project.virtual_lab_id,
            "project_id": project.project_id,
            "ssh_user": ssh_user,
            "cluster_name": name,
        }
        if isinstance(fsx_id, str) and fsx_id:
            if not s.lustre_bucket:
                return None, "the cluster has Lustre but no Nexus data bucket is configured"
            lustre = LustreStorage(
                fsx_id, s.lustre_mount, s.lustre_dra_path, s.lustre_bucket, s.lustre_prefix
            )
            return lustre, s.lustre_runs_root.format(dra_root=lustre.dra_root, **fields)
        return SharedStorage(s.shared_path), s.shared_runs_root.format(
            shared_path=s.shared_path, **fields
        )

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


# ==================================================================== helpers


def _identity_of(cluster: Mapping[str, Any]) -> _Identity:
    def text(*keys: str) -> str | None:
        for key in keys:
            value = cluster.get(key)
            if isinstance(value, str) and value:
                return value
        return None

    single = text("private_ssh_key_arn")
    return _Identity(
        cluster_name=str(cluster["clusterName"]),
        ssh_user=text("ssh_user"),
        user_key=text("user_private_ssh_key_arn") or single,
        admin_key=text("admin_private_ssh_key_arn", "admin_user_private_ssh_key_arn") or single,
    )


def _format(template: str | None, fields: Mapping[str, str]) -> str | None:
    return template.format(**fields) if template else None


def _unknown(status: str, why: str) -> ProvisioningStatus:
    return ProvisioningStatus(ProvisioningPhase.UNKNOWN, detail=f"{status}, but {why}")


def _failure_detail(status: str, described: Mapping[str, Any]) -> str:
    reasons: list[str] = []
    failures = described.get("failures")
    if isinstance(failures, list):
        for failure in failures:
            if isinstance(failure, dict):
                code, reason = failure.get("failureCode"), failure.get("failureReason")
                reasons.append(": ".join(str(p) for p in (code, reason) if p))
    stack = described.get("cloudFormationStackStatus", described.get("cloudformationStackStatus"))
    if stack and stack != status:
        reasons.append(f"stack {stack}")
    if status.startswith("DELETE_"):
        reasons.append("the cluster is being deleted or its deletion failed")
    return status + (": " + "; ".join(r for r in reasons if r) if reasons else "")
