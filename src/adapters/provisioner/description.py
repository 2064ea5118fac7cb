"""A cluster as the ParallelCluster Provisioner describes it, read as the domain's words.

Pure: no HTTP, no AWS SDK. The description is ParallelCluster's DescribeCluster object, flat,
plus ``vlab_id``, ``project_id`` and ``clusterFsxId`` (the GET answer,
``docs/external-contracts.md`` section 1); ``status_of`` makes a ``ProvisioningStatus`` of it,
with a ``ClusterHandle`` when the cluster is READY. ``ProvisionerSettings`` say how to read it
(head node address, users, key references, storage) and, for the client, how to call the
provisioner.

Statuses (``clusterStatus``) and what ``describe`` makes of them (the two 404 rows are the
client's, ``http.py``: they depend on its own POST):

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

- ``ssh_user`` and the SSH key references come only in POST answers (``identity_of``). The
  adapter remembers the ones of its latest POST per project (the provisioner's own word: ARNs);
  without one (e.g. after a restart) it uses the settings: ``ssh_user`` (default ``sim``, the
  user the provisioner creates) and the secret-name templates ``user_key_template`` /
  ``admin_key_template`` (defaults ``{cluster_name}_sim`` and ``{cluster_name}``: the
  provisioner stores each private key in Secrets Manager under its EC2 key-pair name, and
  Secrets Manager resolves a name as well as an ARN). An older answer with a single
  ``private_ssh_key_arn`` serves both roles; the transitional ``admin_user_private_ssh_key_arn``
  is read as the admin key.
- The head node's SSH host key is in no answer of the provisioner. The adapter takes
  ``host_key_for(cluster_name)`` from the composition root: ``"<type> <base64>"``, or
  ``AcceptNewHostKey`` (no key pinned yet: the SSH adapter accepts the first one presented and
  pins it). READY is refused without one (UNKNOWN, with the lookup's DomainError as detail; a
  ServiceUnavailable from the lookup propagates). Production choice:
  ``host_key_from_secrets(secret_store, template, policy)`` reads the secret
  ``{cluster_name}-host-key``. Under the ``pinned`` policy (the default) that secret must be
  written by the head node's configure step (an ``OnNodeConfigured`` script publishing
  ``/etc/ssh/ssh_host_ed25519_key.pub``: a change the provisioner does not make today), and a
  cluster without it is not READY. Under ``accept-new`` a cluster without it is READY with
  ``AcceptNewHostKey(that secret)``: the first connection pins the key presented by creating the
  secret, and from then on it is read from there like a published one (OpenSSH's
  ``StrictHostKeyChecking accept-new``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from obp_workflow.core.cluster import (
    AcceptNewHostKey,
    ClusterHandle,
    HostKey,
    LustreStorage,
    ProvisioningPhase,
    ProvisioningStatus,
    SecretRef,
    SharedStorage,
    Storage,
)
from obp_workflow.core.errors import DomainError, SecretNotFound, ServiceUnavailable
from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.secrets import SecretStore

#: ``pinned``: a cluster is usable once its host key is published; ``accept-new``: also before,
#: trusting the key its head node presents at the first connection (then pinned).
HostKeyPolicy = Literal["pinned", "accept-new"]

READY_STATUSES = frozenset({"CREATE_COMPLETE", "UPDATE_COMPLETE"})
FAILED_STATUSES = frozenset({"CREATE_FAILED"})  # and every DELETE_*


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
class Identity:
    """What a POST answer said about how to log in to the project's cluster."""

    cluster_name: str
    ssh_user: str | None
    user_key: str | None
    admin_key: str | None


def identity_of(cluster: Mapping[str, Any]) -> Identity:
    """What a POST answer's ``cluster`` says about logging in (``clusterName`` is a string)."""

    def text(*keys: str) -> str | None:
        for key in keys:
            value = cluster.get(key)
            if isinstance(value, str) and value:
                return value
        return None

    single = text("private_ssh_key_arn")
    return Identity(
        cluster_name=str(cluster["clusterName"]),
        ssh_user=text("ssh_user"),
        user_key=text("user_private_ssh_key_arn") or single,
        admin_key=text("admin_private_ssh_key_arn", "admin_user_private_ssh_key_arn") or single,
    )


def host_key_from_secrets(
    secrets: SecretStore,
    template: str = "{cluster_name}-host-key",
    policy: HostKeyPolicy = "pinned",
) -> Callable[[str], HostKey]:
    """The production ``host_key_for``: the head node's public host key from a secret; under
    ``accept-new``, when that secret does not exist, ``AcceptNewHostKey`` naming it (under
    ``pinned``, SecretNotFound: the cluster is not usable)."""
    if policy not in ("pinned", "accept-new"):
        raise ValueError(f"unknown host key policy {policy!r}: 'pinned' or 'accept-new'")

    def host_key_for(cluster_name: str) -> HostKey:
        ref = SecretRef(template.format(cluster_name=cluster_name))
        try:
            return secrets.get(ref).reveal().strip()
        except SecretNotFound:
            if policy == "accept-new":
                return AcceptNewHostKey(ref)
            raise

    return host_key_for


def phase_of(cluster_status: str) -> ProvisioningPhase:
    """READY, FAILED or IN_PROGRESS: an unknown status is never a failure."""
    if cluster_status in READY_STATUSES:
        return ProvisioningPhase.READY
    if cluster_status in FAILED_STATUSES or cluster_status.startswith("DELETE_"):
        return ProvisioningPhase.FAILED
    return ProvisioningPhase.IN_PROGRESS


def status_of(
    project: ProjectRef,
    described: Mapping[str, Any],
    settings: ProvisionerSettings,
    *,
    learned: Identity | None,
    host_key_for: Callable[[str], HostKey],
) -> ProvisioningStatus:
    """The project's cluster as ``described`` (its ``clusterStatus`` a string); ``learned``: what
    the latest POST answer for the project said, if any."""
    s = settings
    status = str(described["clusterStatus"])
    incomplete = _incomplete(project, status, described)
    if incomplete is not None:
        return incomplete
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
    if learned is not None and learned.cluster_name != name:
        learned = None
    fields = {"cluster_name": name, "vlab_id": project.virtual_lab_id}
    fields["project_id"] = project.project_id
    known = learned or Identity(name, None, None, None)
    user_key = known.user_key or _format(s.user_key_template, fields)
    admin_key = known.admin_key or _format(s.admin_key_template, fields)
    if not user_key or not admin_key:
        return _unknown(status, "the cluster's SSH key references are unknown: request it")
    ssh_user = known.ssh_user or s.ssh_user
    try:
        host_key = host_key_for(name)
    except ServiceUnavailable:
        raise
    except DomainError as exc:
        return _unknown(status, f"the head node's host key is not available: {exc.message}")
    storage, runs_root = _storage(project, name, ssh_user, described.get("clusterFsxId"), s)
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


def _incomplete(
    project: ProjectRef, status: str, described: Mapping[str, Any]
) -> ProvisioningStatus | None:
    """The status when the description is of another project (UNKNOWN) or of a cluster that is
    not complete (FAILED, IN_PROGRESS); None for a complete cluster of the project."""
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
    return None


def _storage(
    project: ProjectRef, name: str, ssh_user: str, fsx_id: object, s: ProvisionerSettings
) -> tuple[Storage | None, str]:
    """The storage and runs root, or (None, why not)."""
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
