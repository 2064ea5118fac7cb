"""Stand-ins for ports whose production adapter is not wired in a deployment mode yet.

They never pretend: every call raises ServiceUnavailable naming what is missing, so a run that
reaches such a step waits (the step is retried) and says why, instead of being faked through.
"""

from __future__ import annotations

from obp_workflow.core.cluster import ClusterHandle
from obp_workflow.core.errors import ServiceUnavailable
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import SyncOutcome, SyncPlan
from obp_workflow.ports.knowledge_graph import KnowledgeGraph, Registration, RunProvenance
from obp_workflow.ports.sync import DataSynchronizer, SyncStart


class Unwired(KnowledgeGraph, DataSynchronizer):
    def __init__(self, what: str) -> None:
        self.what = what

    def _refuse(self) -> ServiceUnavailable:
        return ServiceUnavailable(f"{self.what} is not configured in this deployment")

    def register(self, provenance: RunProvenance) -> Registration:
        raise self._refuse()

    def withdraw(self, run: RunHeader) -> None:
        raise self._refuse()

    def start(
        self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan, attempt: int
    ) -> SyncStart:
        raise self._refuse()

    def confirm(self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan) -> SyncOutcome:
        raise self._refuse()
