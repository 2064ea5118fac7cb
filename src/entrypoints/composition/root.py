"""One place where ports meet adapters, used by every way in.

Nothing is built at import time: ``build(settings)`` makes a container, and its providers make
each adapter the first time it is needed. The container offers the two use-case objects:
``requests`` (what the API asks: it needs the repository, the instance orchestrator, the clock
and ids, the cluster only for a log and the knowledge graph only for a run's provenance) and
``pipeline`` (what drives runs: every port). The adapter families live in their own modules
(:mod:`.local`, :mod:`.fake`, :mod:`.aws`), imported when asked for: the production service
never imports the in-memory adapters, nor the tests the AWS ones.

Each slot bears the snake-case name of its port (``cluster_gateway`` for ``ClusterGateway``):
the same name is the family's attribute and the override key of ``build``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dependency_injector import containers, providers

from obp_workflow.application.clusters import ClusterDirectory
from obp_workflow.application.pipeline import Pipeline
from obp_workflow.application.policy import ServicePolicy
from obp_workflow.application.recorder import RunRecorder
from obp_workflow.application.requests import Requests, RunLogs, RunProvenanceReader
from obp_workflow.core.sync import SyncLimits
from obp_workflow.ports.cluster import ClusterGateway, ClusterProvisioner
from obp_workflow.ports.identity import TokenVerifier
from obp_workflow.ports.instances import InstanceOrchestrator
from obp_workflow.ports.knowledge_graph import KnowledgeGraph
from obp_workflow.ports.runs import RunRepository
from obp_workflow.ports.secrets import SecretStore
from obp_workflow.ports.sync import DataSynchronizer
from obp_workflow.ports.system import Clock, EventPublisher, IdGenerator

from .settings import Settings

#: The slots every family fills, by port.
SLOTS = (
    "clock",
    "id_generator",
    "event_publisher",
    "run_repository",
    "cluster_provisioner",
    "cluster_gateway",
    "data_synchronizer",
    "knowledge_graph",
    "instance_orchestrator",
    "secret_store",
    "token_verifier",
)


def policy_from(settings: Settings) -> ServicePolicy:
    return ServicePolicy(
        provisioning_timeout=timedelta(minutes=settings.provisioning_timeout_minutes),
        max_submit_attempts=settings.max_submit_attempts,
        submit_lease=timedelta(seconds=settings.submit_lease_seconds),
        cluster_cache_ttl=timedelta(seconds=settings.cluster_cache_seconds),
        sync_limits=SyncLimits(
            direct_upload_max_file_bytes=settings.direct_upload_max_file_bytes,
            direct_upload_max_total_bytes=settings.direct_upload_max_total_bytes,
            max_attempts=settings.sync_max_attempts,
        ),
        max_log_bytes=settings.max_log_bytes,
    )


class Service(containers.DeclarativeContainer):
    """The service's slots (each filled by an adapter of its port) and its use cases."""

    settings = providers.Dependency(instance_of=Settings)
    clock = providers.Dependency(instance_of=Clock)
    id_generator = providers.Dependency(instance_of=IdGenerator)
    event_publisher = providers.Dependency(instance_of=EventPublisher)
    run_repository = providers.Dependency(instance_of=RunRepository)
    cluster_provisioner = providers.Dependency(instance_of=ClusterProvisioner)
    cluster_gateway = providers.Dependency(instance_of=ClusterGateway)
    data_synchronizer = providers.Dependency(instance_of=DataSynchronizer)
    knowledge_graph = providers.Dependency(instance_of=KnowledgeGraph)
    instance_orchestrator = providers.Dependency(instance_of=InstanceOrchestrator)
    secret_store = providers.Dependency(instance_of=SecretStore)
    token_verifier = providers.Dependency(instance_of=TokenVerifier)

    policy = providers.Singleton(policy_from, settings)
    recorder = providers.Singleton(RunRecorder, run_repository, event_publisher)
    clusters = providers.Singleton(
        ClusterDirectory, cluster_provisioner, clock, policy.provided.cluster_cache_ttl
    )
    run_logs = providers.Singleton(
        RunLogs, clusters, cluster_gateway, policy.provided.max_log_bytes
    )
    run_provenance = providers.Singleton(RunProvenanceReader, knowledge_graph)
    requests = providers.Singleton(
        Requests,
        run_repository=run_repository,
        instance_orchestrator=instance_orchestrator,
        recorder=recorder,
        clock=clock,
        id_generator=id_generator,
        run_logs=run_logs.provider,  # the cluster is built on the first log request
        run_provenance=run_provenance.provider,  # the graph, on the first provenance request
    )
    pipeline = providers.Singleton(
        Pipeline,
        run_repository=run_repository,
        cluster_provisioner=cluster_provisioner,
        cluster_gateway=cluster_gateway,
        data_synchronizer=data_synchronizer,
        knowledge_graph=knowledge_graph,
        clusters=clusters,
        recorder=recorder,
        clock=clock,
        policy=policy,
    )


def family_for(settings: Settings) -> containers.DeclarativeContainer:
    """The adapter family ``settings.adapters`` names, its module imported only when asked for."""
    if settings.adapters == "aws":
        from .aws import AwsAdapters

        return AwsAdapters(settings=providers.Object(settings))
    if settings.adapters == "local":
        from .local import LocalAdapters

        return LocalAdapters(settings=providers.Object(settings))
    from .fake import FakeAdapters

    return FakeAdapters()


def build(settings: Settings, **overrides: object) -> Service:
    """The service wired as ``settings.adapters`` says; ``overrides`` replace single adapters
    by slot name (given as instances), e.g. ``clock=FakeClock()`` in a test."""
    unknown = sorted(set(overrides) - set(SLOTS))
    if unknown:
        raise TypeError(f"no such slot: {', '.join(unknown)} (slots: {', '.join(SLOTS)})")
    family: Any = family_for(settings)
    for name, value in overrides.items():
        getattr(family, name).override(providers.Object(value))
    container = Service(
        settings=providers.Object(settings), **{name: getattr(family, name) for name in SLOTS}
    )
    container.check_dependencies()
    return container
