"""The AWS adapters, wired from settings. Imported only when ``OBP_ADAPTERS=aws`` (boto3 and
its clients are not on the cold path of the in-memory service)."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from dependency_injector import containers, providers

from obp_workflow.adapters.aws.dynamodb import DynamoRunRepository
from obp_workflow.adapters.aws.ecs import EcsInstances, EcsTaskConfig
from obp_workflow.adapters.aws.s3 import S3ObjectStore
from obp_workflow.adapters.aws.secrets import SecretsManagerStore
from obp_workflow.adapters.keycloak.verifier import KeycloakSettings, KeycloakTokenVerifier
from obp_workflow.adapters.local.system import LogPublisher, SystemClock, UuidIds
from obp_workflow.adapters.local.unwired import Unwired
from obp_workflow.adapters.provisioner.http import (
    HttpProvisioner,
    ProvisionerSettings,
    host_key_from_secrets,
)
from obp_workflow.adapters.ssh.connection import SshPool
from obp_workflow.adapters.ssh.slurm import SlurmGateway
from obp_workflow.entrypoints.settings import Settings


def client(session: boto3.session.Session, service: str, settings: Settings) -> Any:
    """One boto3 client, with the endpoint override and bounded, adaptive retries."""
    return session.client(
        service,  # type: ignore[call-overload]
        endpoint_url=settings.aws_endpoint_url,
        config=Config(
            region_name=settings.aws_region, retries={"max_attempts": 3, "mode": "adaptive"}
        ),
    )


def ecs_config(settings: Settings) -> EcsTaskConfig:
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
    return ProvisionerSettings(
        include_lustre=settings.provisioner_include_lustre,
        tier=settings.provisioner_tier,
        lustre_bucket=settings.lustre_bucket,
        lustre_prefix=settings.lustre_prefix,
    )


def provisioner(
    settings: Settings, session: boto3.session.Session, secrets: SecretsManagerStore
) -> HttpProvisioner:
    return HttpProvisioner.from_session(
        settings.provisioner_url or "",
        settings=provisioner_settings(settings),
        host_key_for=host_key_from_secrets(secrets, settings.host_key_secret_template),
        session=session._session,  # the botocore session: credentials refresh as they expire
        region=settings.aws_region,
    )


def keycloak_settings(settings: Settings) -> KeycloakSettings:
    return KeycloakSettings(
        issuer=settings.keycloak_issuer or "",
        audiences=settings.split(settings.keycloak_audiences),
        authorized_parties=settings.split(settings.keycloak_authorized_parties),
        groups_source=settings.keycloak_groups_source,
    )


class AwsAdapters(containers.DeclarativeContainer):
    """Every port on its production adapter that exists today."""

    settings = providers.Dependency(instance_of=Settings)
    session = providers.Singleton(boto3.session.Session, region_name=settings.provided.aws_region)

    clock = providers.Singleton(SystemClock)
    ids = providers.Singleton(UuidIds)
    events = providers.Singleton(LogPublisher)
    runs = providers.Singleton(
        DynamoRunRepository,
        providers.Factory(client, session, "dynamodb", settings),
        settings.provided.runs_table,
    )
    instances = providers.Singleton(
        EcsInstances,
        providers.Factory(client, session, "ecs", settings),
        providers.Factory(ecs_config, settings),
    )
    secrets = providers.Singleton(
        SecretsManagerStore,
        providers.Factory(client, session, "secretsmanager", settings),
        settings.provided.secrets_cache_seconds,
    )
    objects = providers.Singleton(S3ObjectStore, providers.Factory(client, session, "s3", settings))
    provisioner = providers.Singleton(provisioner, settings, session, secrets)
    cluster = providers.Singleton(SlurmGateway, providers.Singleton(SshPool, secrets))
    tokens = providers.Singleton(
        KeycloakTokenVerifier, providers.Factory(keycloak_settings, settings)
    )
    # Registration and data sync come with their production adapters (Nexus, Lustre HSM).
    knowledge_graph = providers.Singleton(Unwired, "the knowledge graph (Nexus)")
    synchronizer = providers.Singleton(Unwired, "data synchronisation")
