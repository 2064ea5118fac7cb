"""The one-machine family, wired from settings. Imported only when ``OBP_ADAPTERS=local``.

Each attribute of :class:`LocalAdapters` bears its slot's name (``root.SLOTS``). State lives in
one folder, ``OBP_HOME``:

    runs.sqlite       the runs (the SQLite repository)
    cluster/          the local process cluster: run folders, job records, slots
    graph.sqlite      the knowledge graph (JSON-LD documents with revisions)
    files/            the graph's files: the runs' uploaded outputs, with their digests
    objects/          the object store (buckets as folders)
    instances/        one worker process per project with work: its state and its log
    issuer/           the local token issuer's signing key
    secrets/          the service's own secrets (a host key pinned on first use)

The cluster is this machine's process scheduler (``OBP_LOCAL_CLUSTER=local``) or a Slurm
cluster reached over SSH (``ssh-slurm``, ``OBP_SLURM_*``), handed out by a static provisioner
to every project. Outputs leave the cluster by the direct upload into the local graph, as on
a production cluster without Lustre. Tokens are verified by the production Keycloak verifier
against the local issuer that ``serve`` publishes.
"""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dependency_injector import containers, providers

from obp_workflow.adapters.system.clock import SystemClock
from obp_workflow.adapters.system.event_publisher import LogEventPublisher
from obp_workflow.adapters.system.id_generator import UuidIdGenerator
from obp_workflow.core.cluster import ClusterHandle, SecretRef, SharedStorage

from .settings import Settings

if TYPE_CHECKING:
    from obp_workflow.adapters.local.instance_orchestrator import ProcessInstanceOrchestrator
    from obp_workflow.adapters.local.knowledge_graph import SqliteKnowledgeGraph
    from obp_workflow.adapters.local.secret_store import FileSecretStore
    from obp_workflow.adapters.sync.router import SyncRouter
    from obp_workflow.ports.cluster import ClusterGateway, ClusterProvisioner
    from obp_workflow.ports.identity import TokenVerifier
    from obp_workflow.ports.runs import RunRepository

#: The name under which the secret store hands out the ssh-slurm key file (a name, no secret).
SLURM_KEY_SECRET = "ssh-slurm-key"  # noqa: S105
#: Where the local process cluster keeps its run folders, under OBP_HOME.
CLUSTER_FOLDER = "cluster"


def home_of(settings: Settings) -> Path:
    """OBP_HOME, created (mode 0700) on first use."""
    return home_folder(settings.home)


def home_folder(home: Path) -> Path:
    """``home`` as OBP_HOME: a folder this user may write, created (mode 0700) when missing;
    else ValueError, one line naming OBP_HOME."""
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"OBP_HOME={home} is not a folder") from None
    except OSError as exc:
        raise ValueError(f"OBP_HOME={home} cannot be created: {exc.strerror}") from None
    if not os.access(home, os.R_OK | os.W_OK | os.X_OK):
        raise ValueError(f"OBP_HOME={home} is not a folder this user may write")
    return home


def local_issuer(settings: Settings) -> str:
    """The issuer the local tokens carry: the configured one, else where ``serve`` listens by
    default."""
    from obp_workflow.adapters.local.token_issuer import DEFAULT_ISSUER

    return settings.keycloak_issuer or DEFAULT_ISSUER


# ==================================================================== the cluster


def cluster_handle(settings: Settings) -> ClusterHandle:
    """The one cluster of every project: this machine, or the configured Slurm cluster."""
    if settings.local_cluster == "ssh-slurm":
        user = settings.slurm_user or ""
        return ClusterHandle(
            name="ssh-slurm",
            host=settings.slurm_host or "",
            port=settings.slurm_port,
            ssh_user=user,
            user_key=SecretRef(SLURM_KEY_SECRET),
            admin_key=SecretRef(SLURM_KEY_SECRET),
            host_key=settings.slurm_host_key or "",
            storage=SharedStorage(settings.shared_path),
            runs_root=settings.slurm_runs_root or f"/home/{user}/obp-workflow/runs",
            partition=settings.cluster_partition,
        )
    root = home_of(settings) / CLUSTER_FOLDER
    runs = root / "runs"
    runs.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        return ClusterHandle(
            name="local",
            host="localhost",
            port=22,
            ssh_user=getpass.getuser(),
            user_key=SecretRef("local-none"),
            admin_key=SecretRef("local-none"),
            host_key="local none",  # no SSH: the jobs run on this machine
            storage=SharedStorage(str(root)),
            runs_root=str(runs),
        )
    except ValueError as exc:
        raise ValueError(f"OBP_HOME={settings.home}: {exc}") from None


def cluster_provisioner(settings: Settings) -> ClusterProvisioner:
    from obp_workflow.adapters.local.cluster_provisioner import StaticClusterProvisioner

    return StaticClusterProvisioner(cluster_handle(settings))


def cluster_gateway(settings: Settings, secret_store: FileSecretStore) -> ClusterGateway:
    if settings.local_cluster == "ssh-slurm":
        from obp_workflow.adapters.ssh.connection import SshPool
        from obp_workflow.adapters.ssh.slurm import SlurmClusterGateway

        from .aws import pool_settings

        return SlurmClusterGateway(SshPool(secret_store, pool_settings(settings)))
    from obp_workflow.adapters.local.cluster_gateway import ProcessClusterGateway

    return ProcessClusterGateway(slots=settings.local_slots)


# ==================================================================== state in OBP_HOME


def run_repository(settings: Settings) -> RunRepository:
    from obp_workflow.adapters.sqlite.run_repository import SqliteRunRepository

    return SqliteRunRepository(home_of(settings) / "runs.sqlite")


def secret_store(settings: Settings) -> FileSecretStore:
    from obp_workflow.adapters.local.secret_store import FileSecretStore

    aliases = (
        {SLURM_KEY_SECRET: settings.slurm_key_file.expanduser()}
        if settings.local_cluster == "ssh-slurm" and settings.slurm_key_file
        else {}
    )
    return FileSecretStore(home_of(settings), aliases)


def knowledge_graph(settings: Settings) -> SqliteKnowledgeGraph:
    from obp_workflow.adapters.local.knowledge_graph import SqliteKnowledgeGraph

    return SqliteKnowledgeGraph(home_of(settings))


def data_synchronizer(
    cluster_gateway: ClusterGateway, knowledge_graph: SqliteKnowledgeGraph
) -> SyncRouter:
    """The direct upload into the local graph; there is no Lustre on one machine."""
    from obp_workflow.adapters.nexus.upload import NexusUploadSynchronizer
    from obp_workflow.adapters.sync.router import SyncRouter

    return SyncRouter(
        lustre=None,
        upload=NexusUploadSynchronizer(cluster_gateway, knowledge_graph),
        lustre_missing="a Lustre HSM export (the local family has no Lustre)",
    )


def instance_orchestrator(settings: Settings) -> ProcessInstanceOrchestrator:
    """One worker process per project with work, given this process's settings."""
    from obp_workflow.adapters.local.instance_orchestrator import ProcessInstanceOrchestrator

    environment = dict(os.environ)
    environment.update(OBP_ADAPTERS="local", OBP_HOME=str(home_of(settings)))
    # One luigid per project's worker: each on a free port (the orchestrator picks and logs
    # it), unless one is asked for.
    environment.setdefault("OBP_LUIGID_PORT", "0")
    return ProcessInstanceOrchestrator(home_of(settings), environment)


def token_verifier(settings: Settings) -> TokenVerifier:
    """The production verifier, trusting the local issuer (``token_verifier.py`` builds it, as
    for the authorizer)."""
    from .token_verifier import TokenSettings, build_token_verifier

    return build_token_verifier(
        TokenSettings(
            adapters="local",
            keycloak_issuer=local_issuer(settings),
            keycloak_audiences=settings.split(settings.keycloak_audiences),
            keycloak_authorized_parties=settings.split(settings.keycloak_authorized_parties),
            keycloak_groups_source=settings.keycloak_groups_source,
        )
    )


class LocalAdapters(containers.DeclarativeContainer):
    """Every port on its one-machine adapter."""

    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)
    id_generator = providers.Singleton(UuidIdGenerator)
    event_publisher = providers.Singleton(LogEventPublisher)
    run_repository = providers.Singleton(run_repository, settings)
    secret_store = providers.Singleton(secret_store, settings)
    cluster_provisioner = providers.Singleton(cluster_provisioner, settings)
    cluster_gateway = providers.Singleton(cluster_gateway, settings, secret_store)
    knowledge_graph = providers.Singleton(knowledge_graph, settings)
    data_synchronizer = providers.Singleton(data_synchronizer, cluster_gateway, knowledge_graph)
    instance_orchestrator = providers.Singleton(instance_orchestrator, settings)
    token_verifier = providers.Singleton(token_verifier, settings)
