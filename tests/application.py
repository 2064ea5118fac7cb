"""The two use-case objects over given adapters, wired as the composition root wires them, for
tests that drive the application directly (without the container)."""

from __future__ import annotations

from dataclasses import dataclass

from obp_workflow.application.clusters import ClusterDirectory
from obp_workflow.application.pipeline import Pipeline
from obp_workflow.application.policy import ServicePolicy
from obp_workflow.application.recorder import RunRecorder
from obp_workflow.application.requests import Requests, RunLogs, RunProvenanceReader
from obp_workflow.ports.cluster import ClusterGateway, ClusterProvisioner
from obp_workflow.ports.instances import InstanceOrchestrator
from obp_workflow.ports.knowledge_graph import KnowledgeGraph
from obp_workflow.ports.runs import RunRepository
from obp_workflow.ports.sync import DataSynchronizer
from obp_workflow.ports.system import Clock, EventPublisher, IdGenerator


@dataclass(frozen=True)
class Application:
    requests: Requests
    pipeline: Pipeline

    @property
    def run_repository(self) -> RunRepository:
        return self.pipeline.run_repository


def application(
    *,
    run_repository: RunRepository,
    cluster_provisioner: ClusterProvisioner,
    cluster_gateway: ClusterGateway,
    data_synchronizer: DataSynchronizer,
    knowledge_graph: KnowledgeGraph,
    instance_orchestrator: InstanceOrchestrator,
    clock: Clock,
    id_generator: IdGenerator,
    event_publisher: EventPublisher,
    policy: ServicePolicy | None = None,
) -> Application:
    policy = policy or ServicePolicy()
    recorder = RunRecorder(run_repository, event_publisher)
    clusters = ClusterDirectory(cluster_provisioner, clock, policy.cluster_cache_ttl)
    run_logs = RunLogs(clusters, cluster_gateway, policy.max_log_bytes)
    requests = Requests(
        run_repository=run_repository,
        instance_orchestrator=instance_orchestrator,
        recorder=recorder,
        clock=clock,
        id_generator=id_generator,
        run_logs=lambda: run_logs,
        run_provenance=lambda: RunProvenanceReader(knowledge_graph),
    )
    pipeline = Pipeline(
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
    return Application(requests, pipeline)
