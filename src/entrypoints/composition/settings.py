"""Every configuration setting of the service, read from ``OBP_*`` environment variables."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from obp_workflow.core.cluster import SAFE_PATH

#: Settings that must be given when the AWS adapters are wired.
AWS_REQUIRED = (
    "runs_table",
    "ecs_cluster",
    "ecs_task_definition",
    "ecs_container_name",
    "ecs_subnets",
    "provisioner_url",
    "keycloak_issuer",
    "nexus_endpoint",
    "service_client_id",
    "service_client_secret_id",
)


#: A login on a head node (POSIX portable user names, as useradd takes them).
_LOGIN = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
#: A Slurm partition (as a request's own partition is checked).
_SCHEDULER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
#: The fields of every runs-root template besides its root.
_RUN_FIELDS = ("vlab_id", "project_id", "ssh_user", "cluster_name")
#: A value of each template field, for checking templates (a UUID, a login, a cluster name).
_SAMPLE = "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20"


def _template(value: str, fields: tuple[str, ...], *, path: bool, empty: bool = True) -> str:
    """``value`` when it is a ``str.format`` template of only ``fields`` (and, with ``path``,
    gives an absolute path of safe characters); else ValueError, in one line."""
    if not value:
        if empty:
            return value
        raise ValueError("must not be empty")
    allowed = (
        "may use only " + ", ".join("{" + f + "}" for f in fields)
        if fields
        else "may use no {field}"
    )
    try:
        formatted = value.format(
            **{f: "/sample" if f.endswith(("root", "path")) else _SAMPLE for f in fields}
        )
    except (KeyError, IndexError, AttributeError, ValueError):
        raise ValueError(allowed) from None
    if path and (not SAFE_PATH.fullmatch(formatted) or ".." in formatted.split("/")):
        raise ValueError(
            f"must be an absolute path of letters, digits, '_', '.', '-', '/' ({allowed})"
        )
    return value


def _default_home() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "obp-workflow"


class SettingsError(Exception):
    """One line per missing or wrong setting, naming its environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OBP_", extra="ignore", frozen=True)

    adapters: Literal["local", "fake", "aws"] = Field(
        "local",
        description="Which adapters to wire: 'local' (one machine, state in OBP_HOME), "
        "'fake' (in memory) or 'aws'.",
    )
    # ---------------------------------------------------------------- the pipeline
    provisioning_timeout_minutes: int = Field(
        60, ge=1, le=24 * 60, description="How long a run may wait for its cluster."
    )
    max_submit_attempts: int = Field(
        5, ge=1, le=100, description="Unconfirmed submissions tried before a run fails."
    )
    submit_lease_seconds: float = Field(
        120,
        ge=0,
        le=3600,
        description="How long a submission attempt without an outcome holds back another.",
    )
    cluster_cache_seconds: int = Field(
        60, ge=0, le=3600, description="How long a cluster's description is reused."
    )
    sync_max_attempts: int = Field(
        3, ge=1, le=20, description="Data-sync attempts before a run fails."
    )
    direct_upload_max_file_bytes: int = Field(
        5 * 1024**3, ge=1, description="Largest output uploaded directly (no Lustre)."
    )
    direct_upload_max_total_bytes: int = Field(
        50 * 1024**3, ge=1, description="Largest total of a run's direct upload."
    )
    max_log_bytes: int = Field(
        256 * 1024, ge=1024, le=16 * 1024**2, description="Largest log tail served."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the service's own loggers."
    )
    # ---------------------------------------------------------------- the worker
    virtual_lab_id: str | None = Field(
        None, description="The worker's Virtual Lab (set by the orchestrator on its container)."
    )
    project_id: str | None = Field(
        None, description="The worker's project (set by the orchestrator on its container)."
    )
    worker_idle_minutes: float = Field(
        15,
        ge=0,
        le=24 * 60,
        description="Idle time with no unfinished run before the worker exits.",
    )
    worker_threads: int = Field(4, ge=1, le=64, description="Pipeline builds run at once.")
    worker_poll_seconds: float = Field(
        1.0, gt=0, le=60, description="How often the worker looks for new and changed runs."
    )
    worker_sweep_seconds: float = Field(
        30.0, gt=0, le=3600, description="How often every unfinished run is looked at again."
    )
    worker_provisioning_poll_seconds: float = Field(
        10.0, gt=0, le=600, description="How often a cluster being provisioned is asked about."
    )
    luigid_port: int = Field(
        8082, ge=0, le=65535, description="Port of the worker's luigid on loopback (0: any)."
    )
    # ---------------------------------------------------------------- one machine (local)
    home: Path = Field(
        default_factory=_default_home,
        description="Folder of the local family's state (runs, jobs, outputs, graph, keys); "
        "default $XDG_DATA_HOME/obp-workflow or ~/.local/share/obp-workflow.",
    )
    local_cluster: Literal["local", "ssh-slurm"] = Field(
        "local",
        description="The local family's cluster: 'local' (this machine's processes) or "
        "'ssh-slurm' (a Slurm cluster reached over SSH, OBP_SLURM_*).",
    )
    local_slots: int | None = Field(
        None, ge=1, le=1024, description="Jobs run at once on the local cluster (default: CPUs)."
    )
    slurm_host: str | None = Field(None, description="ssh-slurm: the head node's address.")
    slurm_port: int = Field(22, ge=1, le=65535, description="ssh-slurm: its SSH port.")
    slurm_user: str | None = Field(None, description="ssh-slurm: the login that submits jobs.")
    slurm_key_file: Path | None = Field(
        None, description="ssh-slurm: that login's private key file (mode 0600)."
    )
    slurm_host_key: str | None = Field(
        None, description="ssh-slurm: the head node's public host key, '<type> <base64>'."
    )
    slurm_runs_root: str | None = Field(
        None, description="ssh-slurm: folder of the run folders on the cluster (absolute)."
    )
    # ---------------------------------------------------------------- AWS
    aws_region: str = Field("us-east-1", min_length=1, description="AWS region of every client.")
    aws_endpoint_url: str | None = Field(
        None, description="Endpoint override for every AWS client (e.g. a moto server)."
    )
    runs_table: str | None = Field(None, description="DynamoDB table of the runs.")
    ecs_cluster: str | None = Field(None, description="ECS cluster of the workflow instances.")
    ecs_task_definition: str | None = Field(None, description="Task definition of an instance.")
    ecs_container_name: str | None = Field(None, description="Its container given the project.")
    ecs_subnets: str | None = Field(None, description="Comma-separated subnets (awsvpc).")
    ecs_security_groups: str = Field("", description="Comma-separated security groups.")
    ecs_assign_public_ip: bool = Field(False, description="Give instances a public IP.")
    ecs_launch_type: Literal["FARGATE", "EC2"] = Field("FARGATE", description="ECS launch type.")
    secrets_cache_seconds: int = Field(
        300, ge=0, le=3600, description="How long a secret read from Secrets Manager is reused."
    )
    # ---------------------------------------------------------------- the provisioner
    provisioner_url: str | None = Field(
        None, description="Base URL of the ParallelCluster Provisioner API (SigV4, execute-api)."
    )
    provisioner_tier: str | None = Field(None, description="Cluster tier asked for, e.g. debug.")
    provisioner_include_lustre: bool = Field(True, description="Ask for Lustre FSx storage.")
    lustre_bucket: str = Field("", description="The Nexus data bucket behind the Nexus-DRA.")
    lustre_prefix: str = Field("", description="Key prefix of the Nexus-DRA in that bucket.")
    host_key_secret_template: str = Field(
        "{cluster_name}-host-key",
        description="Secret holding a cluster head node's public host key (pinned).",
    )
    host_key_policy: Literal["pinned", "accept-new"] = Field(
        "pinned",
        description="'pinned': a cluster is usable once its host-key secret exists; "
        "'accept-new': without that secret, the key presented at the first connection is "
        "pinned by creating it (OpenSSH's accept-new); a later change is refused either way.",
    )
    # ---------------------------------------------------------------- the project's cluster
    # What the provisioner's answers leave to configuration (docs/external-contracts.md,
    # section 1): how the head node is reached, who logs in, where runs live.
    provisioner_address: Literal["private", "public"] = Field(
        "private", description="Which address of the head node is the SSH host."
    )
    provisioner_ssh_port: int = Field(22, ge=1, le=65535, description="SSH port of head nodes.")
    provisioner_ssh_user: str = Field(
        "sim",
        description="Login of the simulation jobs when no provisioner answer of this process "
        "named it (the GET answer does not).",
    )
    provisioner_admin_user: str = Field(
        "ec2-user",
        description="Login of the admin key (the elevated sync job); empty: the simulation user.",
    )
    user_key_secret_template: str = Field(
        "{cluster_name}_sim",
        description="Secret of the simulation user's private key when no provisioner answer "
        "gave its ARN; empty: unknown until one does.",
    )
    admin_key_secret_template: str = Field(
        "{cluster_name}",
        description="Secret of the admin private key when no provisioner answer gave its ARN; "
        "empty: unknown until one does.",
    )
    cluster_partition: str | None = Field(
        None, description="Slurm partition of jobs that name none (the cluster's default)."
    )
    lustre_mount: str = Field("/obi/data", description="Where Lustre is mounted on a cluster.")
    lustre_dra_path: str = Field(
        "/project", description="The Nexus-DRA's path in the Lustre file system."
    )
    lustre_runs_root: str = Field(
        "{dra_root}/{vlab_id}/{project_id}/runs",
        description="Folder of the run folders on a cluster with Lustre.",
    )
    shared_path: str = Field(
        "/sbo/home", description="The shared file system of a cluster without Lustre."
    )
    shared_runs_root: str = Field(
        "{shared_path}/{ssh_user}/runs",
        description="Folder of the run folders on a cluster without Lustre.",
    )

    # ---------------------------------------------------------------- SSH to the clusters
    ssh_connect_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Timeout of opening an SSH connection to a head node."
    )
    ssh_command_timeout_seconds: float = Field(
        60.0, gt=0, le=3600, description="Timeout of one command on a head node."
    )
    ssh_keepalive_seconds: int = Field(
        30, ge=0, le=3600, description="SSH keepalive interval (0: none)."
    )
    ssh_connects_per_minute: int = Field(
        6, ge=1, le=600, description="New SSH connections per cluster per minute, at most."
    )
    ssh_queries_per_minute: int = Field(
        120, ge=1, le=6000, description="Scheduler queries per cluster per minute, at most."
    )
    # ---------------------------------------------------------------- Keycloak
    keycloak_issuer: str | None = Field(
        None, description="Realm URL as in the tokens' iss, e.g. https://HOST/realms/REALM."
    )
    keycloak_audiences: str = Field(
        "", description="Comma-separated accepted token audiences (aud)."
    )
    keycloak_authorized_parties: str = Field(
        "", description="Comma-separated accepted authorized parties (azp)."
    )
    keycloak_groups_source: Literal["token", "userinfo"] = Field(
        "token", description="Where memberships come from: the groups claim or /userinfo."
    )
    keycloak_token_url: str | None = Field(
        None,
        description="Token endpoint of the service's own client (default: the issuer's "
        "/protocol/openid-connect/token).",
    )
    service_client_id: str | None = Field(
        None,
        description="Keycloak client of the service itself (client credentials): its "
        "identity towards Nexus.",
    )
    service_client_secret_id: str | None = Field(
        None, description="Secrets Manager name or ARN holding that client's secret."
    )
    # ---------------------------------------------------------------- Nexus
    nexus_endpoint: str | None = Field(
        None, description="Nexus Delta's API root, ending in /v1 (e.g. https://HOST/api/nexus/v1)."
    )
    nexus_public_base: str | None = Field(
        None, description="Delta's public base URI, when it differs from the endpoint."
    )
    nexus_realm: str = Field("SBO", min_length=1, description="The realm as Nexus names it.")
    nexus_org_template: str = Field(
        "{virtual_lab_id}", description="Nexus organisation of a Virtual Lab project."
    )
    nexus_project_template: str = Field(
        "{project_id}", description="Nexus project of a Virtual Lab project."
    )
    nexus_s3_storage: str | None = Field(
        None, description="Nexus S3 storage over the Nexus data bucket (file links)."
    )
    nexus_s3_storage_bucket: str | None = Field(
        None,
        description="That storage's bucket: exported outputs there are linked as Nexus files "
        "(default: OBP_LUSTRE_BUCKET).",
    )
    nexus_upload_storage: str | None = Field(
        None, description="Nexus storage of direct uploads (default: the project's)."
    )
    nexus_link_mode: Literal["link", "legacy-files"] = Field(
        "link", description="'link' (/v1/link/files, Delta >= 1.10) or 'legacy-files'."
    )
    # ---------------------------------------------------------------- the Lustre HSM export
    hsm_jobs_root: str | None = Field(
        None,
        description="Folder of the sync jobs' scripts and logs on the head node, writable by "
        "the admin identity (required with Lustre).",
    )
    hsm_wait_seconds: int = Field(
        3 * 3600, ge=60, le=7 * 24 * 3600, description="How long a sync job waits for the HSM."
    )
    hsm_poll_seconds: float = Field(
        10.0, gt=0, le=600, description="How often the sync job asks the HSM for its state."
    )

    @field_validator("provisioner_ssh_user")
    @classmethod
    def _login(cls, value: str) -> str:
        if not _LOGIN.fullmatch(value):
            raise ValueError("must be a user name: 1-32 of a-z, 0-9, '_', '-', not first '-'")
        return value

    @field_validator("provisioner_admin_user")
    @classmethod
    def _admin_login(cls, value: str) -> str:
        if value and not _LOGIN.fullmatch(value):
            raise ValueError(
                "must be empty or a user name: 1-32 of a-z, 0-9, '_', '-', not first '-'"
            )
        return value

    @field_validator("cluster_partition")
    @classmethod
    def _partition(cls, value: str | None) -> str | None:
        if value is not None and not _SCHEDULER_NAME.fullmatch(value):
            raise ValueError("must be a Slurm name: 1-64 of letters, digits, '_', '.', '-'")
        return value

    @field_validator("host_key_secret_template")
    @classmethod
    def _host_key_secret(cls, value: str) -> str:
        return _template(value, ("cluster_name",), path=False, empty=False)

    @field_validator("user_key_secret_template", "admin_key_secret_template")
    @classmethod
    def _key_secret(cls, value: str) -> str:
        return _template(value, ("cluster_name", "vlab_id", "project_id"), path=False)

    @field_validator("lustre_mount", "lustre_dra_path", "shared_path")
    @classmethod
    def _cluster_path(cls, value: str) -> str:
        return _template(value, (), path=True, empty=False)

    @field_validator("lustre_runs_root")
    @classmethod
    def _lustre_runs_root(cls, value: str) -> str:
        return _template(value, ("dra_root", *_RUN_FIELDS), path=True, empty=False)

    @field_validator("shared_runs_root")
    @classmethod
    def _shared_runs_root(cls, value: str) -> str:
        return _template(value, ("shared_path", *_RUN_FIELDS), path=True, empty=False)

    @field_validator("nexus_endpoint")
    @classmethod
    def _nexus_root(cls, value: str | None) -> str | None:
        if value is not None and (
            not value.startswith(("https://", "http://")) or not value.rstrip("/").endswith("/v1")
        ):
            raise ValueError("must be Delta's API root: http(s)://..., ending in /v1")
        return value

    @model_validator(mode="after")
    def _aws_needs(self) -> Settings:
        if self.adapters == "aws":
            missing = [name for name in AWS_REQUIRED if not getattr(self, name)]
            if self.provisioner_include_lustre and not self.lustre_bucket:
                missing.append("lustre_bucket")
            if self.provisioner_include_lustre and not self.hsm_jobs_root:
                missing.append("hsm_jobs_root")
            if self.keycloak_issuer and not (
                self.keycloak_audiences or self.keycloak_authorized_parties
            ):
                missing.append("keycloak_audiences")
            if missing:
                raise ValueError(
                    "required with OBP_ADAPTERS=aws: "
                    + ", ".join("OBP_" + name.upper() for name in missing)
                )
        return self

    @model_validator(mode="after")
    def _ssh_slurm_needs(self) -> Settings:
        if self.adapters == "local" and self.local_cluster == "ssh-slurm":
            needed = ("slurm_host", "slurm_user", "slurm_key_file", "slurm_host_key")
            missing = [name for name in needed if not getattr(self, name)]
            if missing:
                raise ValueError(
                    "required with OBP_LOCAL_CLUSTER=ssh-slurm: "
                    + ", ".join("OBP_" + name.upper() for name in missing)
                )
        return self

    @field_validator("slurm_runs_root")
    @classmethod
    def _slurm_runs_root(cls, value: str | None) -> str | None:
        return None if value is None else _template(value, (), path=True, empty=False)

    @field_validator("slurm_user")
    @classmethod
    def _slurm_login(cls, value: str | None) -> str | None:
        return None if value is None else cls._login(value)

    @field_validator("home")
    @classmethod
    def _home(cls, value: Path) -> Path:
        path = value.expanduser()
        if not path.is_absolute():
            raise ValueError("must be an absolute path")
        return path

    @staticmethod
    def split(value: str | None) -> tuple[str, ...]:
        return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def load_settings(**overrides: object) -> Settings:
    """Read the settings; every problem is reported at once, by variable name."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False, include_input=False):
            name = "OBP_" + "_".join(str(p) for p in err["loc"]).upper()
            message = err["msg"].removeprefix("Value error, ")
            lines.append(message if name == "OBP_" else f"{name}: {message}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None
