"""The production adapters, wired from settings. Imported only when ``OBP_ADAPTERS=aws``.

Each attribute of :class:`AwsAdapters` bears its slot's name (``root.SLOTS``).

Each adapter is made by a small factory that imports its module when it is first built, so an
entrypoint pays only for what it uses. The API Lambda builds only the requests side of the
service (the repository, the instance orchestrator, the clock and ids): it never imports the
Nexus adapter, the HSM synchronizer or paramiko, unless a log is asked for, which builds the
cluster gateway then (``tests/unit/test_cold_path.py`` proves it for a POST and a GET).

The knowledge graph is Nexus, called with the service's own token (Keycloak client credentials,
the client secret in Secrets Manager). Data sync routes each plan to its synchronizer: the
Lustre HSM export (an elevated job over SSH, confirmed in the data bucket) or the direct upload
into Nexus files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from dependency_injector import containers, providers

from obp_workflow.adapters.system.clock import SystemClock
from obp_workflow.adapters.system.event_publisher import LogEventPublisher
from obp_workflow.adapters.system.id_generator import UuidIdGenerator

from .settings import Settings

if TYPE_CHECKING:
    from obp_workflow.adapters.aws.ecs import EcsInstanceOrchestrator, EcsTaskConfig
    from obp_workflow.adapters.keycloak.service_token import ClientCredentials, ServiceTokenProvider
    from obp_workflow.adapters.keycloak.verifier import KeycloakSettings, KeycloakTokenVerifier
    from obp_workflow.adapters.nexus.client import NexusSettings
    from obp_workflow.adapters.nexus.graph import NexusKnowledgeGraph
    from obp_workflow.adapters.provisioner.description import ProvisionerSettings
    from obp_workflow.adapters.provisioner.http import HttpClusterProvisioner
    from obp_workflow.adapters.ssh.connection import PoolSettings
    from obp_workflow.adapters.ssh.slurm import SlurmClusterGateway
    from obp_workflow.adapters.sync.lustre_hsm import HsmSettings
    from obp_workflow.adapters.sync.router import SyncRouter
    from obp_workflow.ports.objects import ObjectStore
    from obp_workflow.ports.runs import RunRepository
    from obp_workflow.ports.secrets import SecretStore


def client(session: boto3.session.Session, service: str, settings: Settings) -> Any:
    """One boto3 client, with the endpoint override and bounded, adaptive retries."""
    return session.client(
        service,  # type: ignore[call-overload]
        endpoint_url=settings.aws_endpoint_url,
        config=Config(
            region_name=settings.aws_region, retries={"max_attempts": 3, "mode": "adaptive"}
        ),
    )


# ==================================================================== settings of each adapter


def ecs_config(settings: Settings) -> EcsTaskConfig:
    from obp_workflow.adapters.aws.ecs import EcsTaskConfig

    return EcsTaskConfig(
        cluster=settings.ecs_cluster or "",
        task_definition=settings.ecs_task_definition or "",
        container_name=settings.ecs_container_name or "",
        subnets=settings.split(settings.ecs_subnets),
        security_groups=settings.split(settings.ecs_security_groups),
        assign_public_ip=settings.ecs_assign_public_ip,
        launch_type=settings.ecs_launch_type,
    )


def provisioner_settings(settings: Settings) -> ProvisionerSettings:
    from obp_workflow.adapters.provisioner.description import ProvisionerSettings

    return ProvisionerSettings(
        include_lustre=settings.provisioner_include_lustre,
        tier=settings.provisioner_tier,
        address=settings.provisioner_address,
        ssh_port=settings.provisioner_ssh_port,
        ssh_user=settings.provisioner_ssh_user,
        admin_user=settings.provisioner_admin_user or None,
        user_key_template=settings.user_key_secret_template or None,
        admin_key_template=settings.admin_key_secret_template or None,
        partition=settings.cluster_partition,
        lustre_mount=settings.lustre_mount,
        lustre_dra_path=settings.lustre_dra_path,
        lustre_bucket=settings.lustre_bucket,
        lustre_prefix=settings.lustre_prefix,
        lustre_runs_root=settings.lustre_runs_root,
        shared_path=settings.shared_path,
        shared_runs_root=settings.shared_runs_root,
    )


def keycloak_settings(settings: Settings) -> KeycloakSettings:
    from obp_workflow.adapters.keycloak.verifier import KeycloakSettings

    return KeycloakSettings(
        issuer=settings.keycloak_issuer or "",
        audiences=settings.split(settings.keycloak_audiences),
        authorized_parties=settings.split(settings.keycloak_authorized_parties),
        groups_source=settings.keycloak_groups_source,
    )


def service_credentials(settings: Settings) -> ClientCredentials:
    from obp_workflow.adapters.keycloak.service_token import ClientCredentials
    from obp_workflow.core.cluster import SecretRef

    return ClientCredentials(
        token_url=settings.keycloak_token_url
        or ClientCredentials.token_url_of(settings.keycloak_issuer or ""),
        client_id=settings.service_client_id or "",
        client_secret=SecretRef(settings.service_client_secret_id or ""),
    )


def nexus_settings(settings: Settings) -> NexusSettings:
    from obp_workflow.adapters.nexus.client import NexusSettings

    return NexusSettings(
        endpoint=settings.nexus_endpoint or "",
        org_template=settings.nexus_org_template,
        project_template=settings.nexus_project_template,
        public_base=settings.nexus_public_base,
        realm=settings.nexus_realm,
        s3_storage=settings.nexus_s3_storage,
        s3_storage_bucket=settings.nexus_s3_storage_bucket or settings.lustre_bucket or None,
        upload_storage=settings.nexus_upload_storage,
        link_mode=settings.nexus_link_mode,
    )


def hsm_settings(settings: Settings) -> HsmSettings:
    from obp_workflow.adapters.sync.lustre_hsm import HsmSettings

    return HsmSettings(
        jobs_root=settings.hsm_jobs_root or "",
        wait_seconds=settings.hsm_wait_seconds,
        poll_seconds=settings.hsm_poll_seconds,
    )


# ==================================================================== adapters


def run_repository(settings: Settings, session: boto3.session.Session) -> RunRepository:
    from obp_workflow.adapters.aws.dynamodb import DynamoRunRepository

    return DynamoRunRepository(client(session, "dynamodb", settings), settings.runs_table or "")


def instance_orchestrator(
    settings: Settings, session: boto3.session.Session
) -> EcsInstanceOrchestrator:
    from obp_workflow.adapters.aws.ecs import EcsInstanceOrchestrator

    return EcsInstanceOrchestrator(client(session, "ecs", settings), ecs_config(settings))


def secret_store(settings: Settings, session: boto3.session.Session) -> SecretStore:
    from obp_workflow.adapters.aws.secrets import SecretsManagerSecretStore

    return SecretsManagerSecretStore(
        client(session, "secretsmanager", settings), settings.secrets_cache_seconds
    )


def object_store(settings: Settings, session: boto3.session.Session) -> ObjectStore:
    from obp_workflow.adapters.aws.s3 import S3ObjectStore

    return S3ObjectStore(client(session, "s3", settings))


def cluster_provisioner(
    settings: Settings, session: boto3.session.Session, secret_store: SecretStore
) -> HttpClusterProvisioner:
    from obp_workflow.adapters.provisioner.description import host_key_from_secrets
    from obp_workflow.adapters.provisioner.http import HttpClusterProvisioner

    return HttpClusterProvisioner.from_session(
        settings.provisioner_url or "",
        settings=provisioner_settings(settings),
        host_key_for=host_key_from_secrets(
            secret_store, settings.host_key_secret_template, settings.host_key_policy
        ),
        session=session._session,  # the botocore session: credentials refresh as they expire
        region=settings.aws_region,
    )


def pool_settings(settings: Settings) -> PoolSettings:
    from obp_workflow.adapters.ssh.connection import PoolSettings

    return PoolSettings(
        connect_timeout=settings.ssh_connect_timeout_seconds,
        command_timeout=settings.ssh_command_timeout_seconds,
        keepalive_seconds=settings.ssh_keepalive_seconds,
        connects_per_minute=settings.ssh_connects_per_minute,
        queries_per_minute=settings.ssh_queries_per_minute,
    )


def cluster_gateway(settings: Settings, secret_store: SecretStore) -> SlurmClusterGateway:
    from obp_workflow.adapters.ssh.connection import SshPool
    from obp_workflow.adapters.ssh.slurm import SlurmClusterGateway

    return SlurmClusterGateway(SshPool(secret_store, pool_settings(settings)))


def token_verifier(settings: Settings) -> KeycloakTokenVerifier:
    from obp_workflow.adapters.keycloak.verifier import KeycloakTokenVerifier

    return KeycloakTokenVerifier(keycloak_settings(settings))


def service_token_provider(settings: Settings, secret_store: SecretStore) -> ServiceTokenProvider:
    from obp_workflow.adapters.keycloak.service_token import ServiceTokenProvider

    return ServiceTokenProvider(service_credentials(settings), secret_store)


def knowledge_graph(
    settings: Settings, token_provider: ServiceTokenProvider
) -> NexusKnowledgeGraph:
    from obp_workflow.adapters.nexus.graph import NexusKnowledgeGraph

    return NexusKnowledgeGraph(nexus_settings(settings), token_provider)


def data_synchronizer(
    settings: Settings,
    cluster_gateway: SlurmClusterGateway,
    object_store: ObjectStore,
    knowledge_graph: NexusKnowledgeGraph,
) -> SyncRouter:
    """Lustre HSM export and direct upload; without Lustre settings the Lustre path refuses."""
    from obp_workflow.adapters.nexus.upload import NexusUploadSynchronizer
    from obp_workflow.adapters.sync.lustre_hsm import LustreHsmSynchronizer
    from obp_workflow.adapters.sync.router import SyncRouter

    lustre = (
        LustreHsmSynchronizer(cluster_gateway, object_store, hsm_settings(settings))
        if settings.hsm_jobs_root
        else None
    )
    return SyncRouter(
        lustre=lustre,
        upload=NexusUploadSynchronizer(cluster_gateway, knowledge_graph),
        lustre_missing="the Lustre HSM export (OBP_HSM_JOBS_ROOT)",
    )


class AwsAdapters(containers.DeclarativeContainer):
    """Every port on its production adapter."""

    settings = providers.Dependency(instance_of=Settings)
    session = providers.Singleton(boto3.session.Session, region_name=settings.provided.aws_region)

    clock = providers.Singleton(SystemClock)
    id_generator = providers.Singleton(UuidIdGenerator)
    event_publisher = providers.Singleton(LogEventPublisher)
    run_repository = providers.Singleton(run_repository, settings, session)
    instance_orchestrator = providers.Singleton(instance_orchestrator, settings, session)
    secret_store = providers.Singleton(secret_store, settings, session)
    object_store = providers.Singleton(object_store, settings, session)
    cluster_provisioner = providers.Singleton(cluster_provisioner, settings, session, secret_store)
    cluster_gateway = providers.Singleton(cluster_gateway, settings, secret_store)
    token_verifier = providers.Singleton(token_verifier, settings)
    service_token_provider = providers.Singleton(service_token_provider, settings, secret_store)
    knowledge_graph = providers.Singleton(knowledge_graph, settings, service_token_provider)
    data_synchronizer = providers.Singleton(
        data_synchronizer, settings, cluster_gateway, object_store, knowledge_graph
    )
