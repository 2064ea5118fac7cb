"""One DataSynchronizer for the application, holding one synchronizer per plan kind.

The application calls a single synchronizer for both kinds of plan: this adapter hands a Lustre
HSM export to the Lustre synchronizer and a direct upload to the upload one. A deployment
without the Lustre settings has no Lustre synchronizer: a Lustre plan then waits, with
``ServiceUnavailable`` naming what is missing, instead of being faked through. It depends only
on the port.
"""

from __future__ import annotations

from obp_workflow.core.cluster import ClusterHandle
from obp_workflow.core.errors import ServiceUnavailable
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import LustreHsmExport, SyncOutcome, SyncPlan
from obp_workflow.ports.sync import DataSynchronizer, SyncStart


class SyncRouter(DataSynchronizer):
    def __init__(
        self,
        lustre: DataSynchronizer | None,
        upload: DataSynchronizer,
        *,
        lustre_missing: str = "the Lustre HSM export",
    ) -> None:
        self.lustre = lustre
        self.upload = upload
        self.lustre_missing = lustre_missing

    def _for(self, plan: SyncPlan) -> DataSynchronizer:
        if not isinstance(plan, LustreHsmExport):
            return self.upload
        if self.lustre is None:
            raise ServiceUnavailable(f"{self.lustre_missing} is not configured in this deployment")
        return self.lustre

    def start(
        self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan, attempt: int
    ) -> SyncStart:
        return self._for(plan).start(cluster, run, plan, attempt)

    def confirm(self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan) -> SyncOutcome:
        return self._for(plan).confirm(cluster, run, plan)
