from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from obp_workflow.core.cluster import ClusterHandle, KeyRole, ProvisioningStatus
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.jobs import JobAccounting, JobObservation
from obp_workflow.core.jobspec import JobSpec


@runtime_checkable
class ClusterProvisioner(Protocol):
    """The platform's ParallelCluster Provisioner: one cluster per project."""

    @abstractmethod
    def request(self, project: ProjectRef) -> ProvisioningStatus:
        """Ask for the project's cluster; idempotent (an existing cluster is not created again)."""

    @abstractmethod
    def describe(self, project: ProjectRef) -> ProvisioningStatus:
        """Where the project's cluster is; never raises for a failed or missing cluster."""

    @abstractmethod
    def delete(self, project: ProjectRef) -> None: ...


@dataclass(frozen=True)
class OutputFile:
    path: str  # relative to the run folder
    size: int


@runtime_checkable
class ClusterGateway(Protocol):
    """The scheduler and files of a cluster, reached with one of its SSH identities."""

    @abstractmethod
    def submit(self, cluster: ClusterHandle, spec: JobSpec) -> str:
        """Write the spec's files into its run folder and submit its script; the job id.

        SubmissionUnclear when the job may exist but its id was not read (look it up by tag);
        SubmissionRejected when the scheduler refused it; ClusterUnreachable when nothing was
        sent."""

    @abstractmethod
    def find_by_tag(
        self, cluster: ClusterHandle, tag: str, role: KeyRole = KeyRole.USER
    ) -> str | None:
        """The id of the job tagged ``tag`` (live or finished), or None when there is none."""

    @abstractmethod
    def poll(self, cluster: ClusterHandle, job_ids: Sequence[str]) -> Mapping[str, JobObservation]:
        """The state of many jobs at once, one entry per id (UNKNOWN when not found)."""

    @abstractmethod
    def accounting(
        self, cluster: ClusterHandle, job_id: str, tag: str | None = None
    ) -> JobAccounting | None:
        """The job's record in the scheduler's accounting (nodes, elapsed time, exit code), or
        None when accounting does not know the job. Accounting may hold older jobs with the
        same id (a controller whose state was reset, a cluster re-created on the same
        accounting database): with ``tag``, only the job of that name counts; without, the
        last one submitted. ClusterUnreachable when the cluster cannot tell."""

    @abstractmethod
    def cancel(self, cluster: ClusterHandle, job_id: str, role: KeyRole = KeyRole.USER) -> None:
        """Cancel a job; cancelling a finished or cancelled job is not an error."""

    @abstractmethod
    def tail_log(self, cluster: ClusterHandle, run_folder: str, max_bytes: int = 65536) -> str:
        """The end of the run's job log (at most ``max_bytes``); empty when there is none yet."""

    @abstractmethod
    def list_outputs(self, cluster: ClusterHandle, run_folder: str) -> Sequence[OutputFile]:
        """Every regular file under the run folder, with its size."""

    @abstractmethod
    def fetch_output(self, cluster: ClusterHandle, run_folder: str, path: str) -> Iterator[bytes]:
        """Stream one output file out of the run folder (``path`` confined to it)."""
