"""The composition root: one place where ports meet adapters, used by every entrypoint.

Nothing is built at import time: ``build(settings)`` makes a container, and its providers make
each adapter the first time it is needed. The adapter families live in their own modules
(:mod:`.wiring_fake`, :mod:`.wiring_aws`), imported when asked for: the production service never
imports the in-memory adapters, nor the tests and the demo the AWS ones.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dependency_injector import containers, providers

from obp_workflow.application.service import ServicePolicy, WorkflowService
from obp_workflow.core.sync import SyncLimits
from obp_workflow.entrypoints.settings import Settings
from obp_workflow.ports.cluster import ClusterGateway, ClusterProvisioner
from obp_workflow.ports.identity import TokenVerifier
from obp_workflow.ports.instances import InstanceOrchestrator
from obp_workflow.ports.knowledge_graph import KnowledgeGraph
from obp_workflow.ports.runs import RunRepository
from obp_workflow.ports.secrets import SecretStore
from obp_workflow.ports.sync import DataSynchronizer
from obp_workflow.ports.system import Clock, EventPublisher, IdGenerator


def policy_from(settings: Settings) -> ServicePolicy:
    return ServicePolicy(
        provisioning_timeout=timedelta(minutes=settings.provisioning_timeout_minutes),
        max_submit_attempts=settings.max_submit_attempts,
        cluster_cache_ttl=timedelta(seconds=settings.cluster_cache_seconds),
        sync_limits=SyncLimits(
            direct_upload_max_file_bytes=settings.direct_upload_max_file_bytes,
            direct_upload_max_total_bytes=settings.direct_upload_max_total_bytes,
            max_attempts=settings.sync_max_attempts,
        ),
        max_log_bytes=settings.max_log_bytes,
    )


class Service(containers.DeclarativeContainer):
    """The service's slots: each must be filled by an adapter of its port."""

    settings = providers.Dependency(instance_of=Settings)
    clock = providers.Dependency(instance_of=Clock)
    ids = providers.Dependency(instance_of=IdGenerator)
    events = providers.Dependency(instance_of=EventPublisher)
    runs = providers.Dependency(instance_of=RunRepository)
    provisioner = providers.Dependency(instance_of=ClusterProvisioner)
    gateway = providers.Dependency(instance_of=ClusterGateway)
    synchronizer = providers.Dependency(instance_of=DataSynchronizer)
    knowledge_graph = providers.Dependency(instance_of=KnowledgeGraph)
    instances = providers.Dependency(instance_of=InstanceOrchestrator)
    secrets = providers.Dependency(instance_of=SecretStore)
    tokens = providers.Dependency(instance_of=TokenVerifier)

    policy = providers.Singleton(policy_from, settings)
    workflow = providers.Singleton(
        WorkflowService,
        runs=runs,
        provisioner=provisioner,
        gateway=gateway,
        synchronizer=synchronizer,
        knowledge_graph=knowledge_graph,
        instances=instances,
        clock=clock,
        ids=ids,
        events=events,
        policy=policy,
    )


def adapters_for(settings: Settings) -> containers.DeclarativeContainer:
    """The adapter family ``settings.adapters`` names, its module imported only when asked for."""
    if settings.adapters == "aws":
        from obp_workflow.entrypoints.wiring_aws import AwsAdapters

        return AwsAdapters(settings=providers.Object(settings))
    from obp_workflow.entrypoints.wiring_fake import FakeAdapters

    return FakeAdapters()


def build(settings: Settings, **overrides: object) -> Service:
    """The service wired as ``settings.adapters`` says; ``overrides`` replace single adapters
    (given as instances), e.g. a manual clock in a test."""
    family: Any = adapters_for(settings)
    for name, value in overrides.items():
        getattr(family, name).override(providers.Object(value))
    container = Service(
        settings=providers.Object(settings),
        clock=family.clock,
        ids=family.ids,
        events=family.events,
        runs=family.runs,
        provisioner=family.provisioner,
        gateway=family.cluster,
        synchronizer=family.synchronizer,
        knowledge_graph=family.knowledge_graph,
        instances=family.instances,
        secrets=family.secrets,
        tokens=family.tokens,
    )
    container.check_dependencies()
    return container
