"""One DataSynchronizer for the application, holding one synchronizer per plan kind.

The application calls a single synchronizer for both kinds of plan (``_sync``): this adapter
hands a Lustre HSM export to the Lustre synchronizer and a direct upload to the upload one.
It depends only on the port.
"""

from __future__ import annotations

from obp_workflow.core.cluster import ClusterHandle
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import LustreHsmExport, SyncOutcome, SyncPlan
from obp_workflow.ports.sync import DataSynchronizer, SyncStart


class SyncRouter(DataSynchronizer):
    def __init__(self, lustre: DataSynchronizer, upload: DataSynchronizer) -> None:
        self.lustre = lustre
        self.upload = upload

    def _for(self, plan: SyncPlan) -> DataSynchronizer:
        return self.lustre if isinstance(plan, LustreHsmExport) else self.upload

    def start(
        self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan, attempt: int
    ) -> SyncStart:
        return self._for(plan).start(cluster, run, plan, attempt)

    def confirm(self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan) -> SyncOutcome:
        return self._for(plan).confirm(cluster, run, plan)
