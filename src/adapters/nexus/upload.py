"""The DataSynchronizer of clusters without Lustre: outputs are streamed into Nexus files.

- ``start`` takes the plan's files one by one: a file Nexus already holds for the run with the
  planned size is skipped (nothing read from the cluster, nothing sent); any other is streamed
  from the cluster (``ClusterGateway.fetch_output``) into the run's Nexus file
  (``upload_file``, which itself sends nothing when the same content is already there). It
  returns the outcome of what landed: each file located by its Nexus file id, with the digest
  Delta computed ("sha256:<hex>"). A file that does not land (missing on the cluster, another
  size than planned, Nexus failing transiently on it) is left out and the others go on: the
  outcome is then short, and ``confirm`` names it. A cluster that does not answer, or Nexus
  refusing the service (4xx: credentials, a withdrawn file), stops the sync with that error;
  so does Nexus failing on every file when nothing landed (it is down, not one file).
- ``confirm`` asks Nexus for every planned file: absent, withdrawn or of another size is
  ``SyncIncomplete`` naming those outputs.

Only ports are used for the cluster (the gateway): adapter families stay independent.
A Lustre HSM plan given to this synchronizer is a programming error (``TypeError``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import IO, Protocol

from obp_workflow.core.cluster import ClusterHandle
from obp_workflow.core.errors import NotFound, ServiceUnavailable, SyncIncomplete
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import NexusDirectUpload, SyncedFile, SyncFile, SyncOutcome, SyncPlan
from obp_workflow.ports.cluster import ClusterGateway
from obp_workflow.ports.sync import DataSynchronizer, SyncStart

from .client import NexusRefusal
from .files import NexusFile

log = logging.getLogger(__name__)


class NexusFiles(Protocol):
    """What the synchronizer needs of the run's Nexus files (``files.NexusRunFiles`` has it,
    and so has ``NexusKnowledgeGraph``)."""

    def file_info(self, run: RunHeader, relative_path: str) -> NexusFile | None: ...

    def upload_file(
        self,
        run: RunHeader,
        relative_path: str,
        stream: IO[bytes] | Iterable[bytes],
        size: int,
        *,
        media_type: str | None = None,
        digest: str | None = None,
    ) -> NexusFile: ...


class NexusUploadSynchronizer(DataSynchronizer):
    def __init__(self, gateway: ClusterGateway, graph: NexusFiles) -> None:
        self.gateway = gateway
        self.graph = graph

    def start(
        self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan, attempt: int
    ) -> SyncStart:
        plan = _direct(plan)
        folder = cluster.run_folder(run.run_id)
        synced: list[SyncedFile] = []
        unavailable: list[ServiceUnavailable] = []
        for f in plan.files:
            there = self.graph.file_info(run, f.relative_path)
            if there is not None and there.size == f.size:
                synced.append(there.synced(f.relative_path))  # landed in an earlier start
                continue
            try:
                stored = self._upload(cluster, run, folder, f)
            except NexusRefusal:
                raise  # Delta answered no: credentials, permissions, a withdrawn file
            except (NotFound, SyncIncomplete) as exc:
                log.warning("sync of run %s: %s not uploaded: %s", run.run_id, f.relative_path, exc)
                continue
            except ServiceUnavailable as exc:
                log.warning("sync of run %s: %s not uploaded: %s", run.run_id, f.relative_path, exc)
                unavailable.append(exc)
                continue
            if stored.size != f.size:
                log.warning(
                    "sync of run %s: Nexus holds %d bytes of %s, not %d",
                    run.run_id,
                    stored.size,
                    f.relative_path,
                    f.size,
                )
                continue
            synced.append(stored.synced(f.relative_path))
        if unavailable and not synced:
            raise unavailable[0]  # Nexus is down, not one file: retry later, no attempt spent
        return SyncOutcome(plan.kind, tuple(synced))

    def confirm(self, cluster: ClusterHandle, run: RunHeader, plan: SyncPlan) -> SyncOutcome:
        plan = _direct(plan)
        synced: list[SyncedFile] = []
        bad: list[str] = []
        why: list[str] = []
        for f in plan.files:
            there = self.graph.file_info(run, f.relative_path)
            if there is None:
                bad.append(f.relative_path)
                why.append(f"{f.relative_path} (absent)")
            elif there.size != f.size:
                bad.append(f.relative_path)
                why.append(f"{f.relative_path} ({there.size} bytes, not {f.size})")
            else:
                synced.append(there.synced(f.relative_path))
        if bad:
            more = f" and {len(why) - 20} more" if len(why) > 20 else ""
            raise SyncIncomplete(
                bad, f"outputs not confirmed in Nexus: {', '.join(why[:20])}{more}"
            )
        return SyncOutcome(plan.kind, tuple(synced))

    def _upload(
        self, cluster: ClusterHandle, run: RunHeader, folder: str, f: SyncFile
    ) -> NexusFile:
        stream = self.gateway.fetch_output(cluster, folder, f.relative_path)
        try:
            return self.graph.upload_file(run, f.relative_path, stream, f.size)
        finally:
            _close(stream)


def _direct(plan: SyncPlan) -> NexusDirectUpload:
    if not isinstance(plan, NexusDirectUpload):
        raise TypeError(f"NexusUploadSynchronizer takes direct-upload plans, not {plan.kind!r}")
    return plan


def _close(stream: Iterator[bytes]) -> None:
    close = getattr(stream, "close", None)
    if callable(close):
        close()


__all__ = ["NexusFiles", "NexusUploadSynchronizer"]
