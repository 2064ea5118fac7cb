"""The project's cluster as the service sees it, and the state of its provisioning."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from enum import Enum

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Characters allowed in cluster paths the service builds commands and directives from.
SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./-]*$")


class KeyRole(Enum):
    """Which of the cluster's SSH identities acts: the user's, or the elevated admin's."""

    USER = "user"
    ADMIN = "admin"


@dataclass(frozen=True)
class SecretRef:
    """A reference to a secret (a Secrets Manager ARN or name). Never the secret itself."""

    ref: str

    def __str__(self) -> str:
        return self.ref


@dataclass(frozen=True)
class LustreStorage:
    """FSx for Lustre with an S3 data repository association (DRA).

    A file at ``{mount_path}{dra_path}/x/y`` is archived by the HSM to
    ``s3://{bucket}/{prefix}/x/y``.
    """

    fsx_id: str
    mount_path: str
    dra_path: str
    bucket: str
    prefix: str = ""

    @property
    def dra_root(self) -> str:
        """Where the association's folder is on the cluster, e.g. ``/obi/data/project``."""
        return posixpath.normpath(self.mount_path + "/" + self.dra_path.strip("/"))

    def s3_key(self, cluster_path: str) -> str | None:
        """The S3 key a cluster file is archived to, or None when it is outside the DRA."""
        root = self.dra_root
        norm = posixpath.normpath(cluster_path)
        if not norm.startswith(root + "/"):
            return None
        rel = norm[len(root) + 1 :]
        return f"{self.prefix.strip('/')}/{rel}" if self.prefix.strip("/") else rel


@dataclass(frozen=True)
class SharedStorage:
    """A plain shared file system (no HSM): outputs leave the cluster by direct upload."""

    path: str


Storage = LustreStorage | SharedStorage


@dataclass(frozen=True)
class AcceptNewHostKey:
    """No host key is pinned for the cluster yet: trust the key its head node presents at the
    first connection and pin it by creating the secret ``pin_to``, which never overwrites
    (OpenSSH's ``StrictHostKeyChecking accept-new``). From then on that secret is the pin: any
    other key is refused, as with a key pinned from the start. Public: a host key is no secret.
    """

    pin_to: SecretRef

    def __post_init__(self) -> None:
        if not self.pin_to.ref.strip():
            raise ValueError("a host key accepted on first use needs the secret to pin it in")


#: A cluster's host key: pinned (``"<type> <base64>"``), or to be accepted on first use.
HostKey = str | AcceptNewHostKey


@dataclass(frozen=True)
class ClusterHandle:
    """Everything needed to reach and use one project's cluster. Holds references, not keys.

    ``host_key`` is the head node's public host key, pinned; or, under the ``accept-new``
    policy and only while none is pinned, ``AcceptNewHostKey``: where to pin the first one seen.
    """

    name: str
    host: str
    port: int
    ssh_user: str
    user_key: SecretRef
    admin_key: SecretRef
    host_key: HostKey
    storage: Storage
    runs_root: str
    admin_user: str | None = None
    partition: str | None = None
    account: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"invalid cluster name {self.name!r}")
        if not SAFE_PATH.fullmatch(self.runs_root) or ".." in self.runs_root.split("/"):
            raise ValueError(f"invalid runs root {self.runs_root!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"invalid port {self.port}")
        if isinstance(self.host_key, str) and len(self.host_key.split()) < 2:
            raise ValueError("the cluster's host key must be pinned ('<type> <base64>')")

    def key_for(self, role: KeyRole) -> SecretRef:
        return self.user_key if role is KeyRole.USER else self.admin_key

    def user_for(self, role: KeyRole) -> str:
        return self.ssh_user if role is KeyRole.USER else (self.admin_user or self.ssh_user)

    def run_folder(self, run_id: str) -> str:
        return posixpath.join(self.runs_root, run_id)


class ProvisioningPhase(Enum):
    READY = "ready"
    IN_PROGRESS = "in-progress"
    FAILED = "failed"
    NOT_FOUND = "not-found"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ProvisioningStatus:
    phase: ProvisioningPhase
    cluster: ClusterHandle | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        if (self.phase is ProvisioningPhase.READY) != (self.cluster is not None):
            raise ValueError("a ready status carries the cluster, and only a ready one")
