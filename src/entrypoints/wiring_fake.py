"""The in-memory adapter family (``OBP_ADAPTERS=fake``): every port in one process, for the
tests, the demo and ``obp-workflow serve`` on a laptop. Imported by the composition root only
when this family is asked for.
"""

from __future__ import annotations

from dependency_injector import containers, providers

from obp_workflow.adapters.fake.cluster import FakeCluster
from obp_workflow.adapters.fake.knowledge_graph import InMemoryKnowledgeGraph
from obp_workflow.adapters.fake.provisioner import EXAMPLE_BUCKET, FakeProvisioner
from obp_workflow.adapters.fake.runs import InMemoryRunRepository
from obp_workflow.adapters.fake.simple import InMemoryInstances, InMemorySecretStore
from obp_workflow.adapters.fake.sync import FakeDataSynchronizer, InMemoryBucket
from obp_workflow.adapters.fake.tokens import StaticTokenVerifier
from obp_workflow.adapters.local.system import LogPublisher, SystemClock, UuidIds


class FakeAdapters(containers.DeclarativeContainer):
    """Every port in memory: the whole service in one process, for tests and the demo."""

    clock = providers.Singleton(SystemClock)
    ids = providers.Singleton(UuidIds)
    events = providers.Singleton(LogPublisher)
    runs = providers.Singleton(InMemoryRunRepository)
    provisioner = providers.Singleton(FakeProvisioner)
    cluster = providers.Singleton(FakeCluster, auto_progress=True)
    bucket = providers.Singleton(InMemoryBucket)
    # Exported outputs in the example clusters' bucket become linked files of the graph.
    knowledge_graph = providers.Singleton(InMemoryKnowledgeGraph, bucket, EXAMPLE_BUCKET)
    synchronizer = providers.Singleton(FakeDataSynchronizer, cluster, bucket, knowledge_graph)
    instances = providers.Singleton(InMemoryInstances, clock)
    secrets = providers.Singleton(InMemorySecretStore)
    tokens = providers.Singleton(StaticTokenVerifier)
