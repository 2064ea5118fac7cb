"""The in-memory adapter family (``OBP_ADAPTERS=fake``): every port in one process, for the
tests, the demo and ``obp-workflow serve`` on a laptop. Imported by the composition root only
when this family is asked for. Each attribute bears its slot's name (``root.SLOTS``).
"""

from __future__ import annotations

from dependency_injector import containers, providers

from obp_workflow.adapters.fake.cluster_gateway import FakeClusterGateway
from obp_workflow.adapters.fake.cluster_provisioner import EXAMPLE_BUCKET, FakeClusterProvisioner
from obp_workflow.adapters.fake.data_synchronizer import FakeDataSynchronizer
from obp_workflow.adapters.fake.instance_orchestrator import FakeInstanceOrchestrator
from obp_workflow.adapters.fake.knowledge_graph import FakeKnowledgeGraph
from obp_workflow.adapters.fake.object_store import FakeObjectStore
from obp_workflow.adapters.fake.run_repository import FakeRunRepository
from obp_workflow.adapters.fake.secret_store import FakeSecretStore
from obp_workflow.adapters.fake.token_verifier import FakeTokenVerifier
from obp_workflow.adapters.system.clock import SystemClock
from obp_workflow.adapters.system.event_publisher import LogEventPublisher
from obp_workflow.adapters.system.id_generator import UuidIdGenerator


class FakeAdapters(containers.DeclarativeContainer):
    """Every port in memory (with the system's clock and ids): the whole service in one
    process."""

    clock = providers.Singleton(SystemClock)
    id_generator = providers.Singleton(UuidIdGenerator)
    event_publisher = providers.Singleton(LogEventPublisher)
    run_repository = providers.Singleton(FakeRunRepository)
    cluster_provisioner = providers.Singleton(FakeClusterProvisioner)
    cluster_gateway = providers.Singleton(FakeClusterGateway, auto_progress=True)
    object_store = providers.Singleton(FakeObjectStore)
    # Exported outputs in the example clusters' bucket become linked files of the graph.
    knowledge_graph = providers.Singleton(FakeKnowledgeGraph, object_store, EXAMPLE_BUCKET)
    data_synchronizer = providers.Singleton(
        FakeDataSynchronizer, cluster_gateway, object_store, knowledge_graph
    )
    instance_orchestrator = providers.Singleton(FakeInstanceOrchestrator, clock)
    secret_store = providers.Singleton(FakeSecretStore)
    token_verifier = providers.Singleton(FakeTokenVerifier)
