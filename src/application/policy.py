"""The knobs of the service's use cases; every one has a sane default."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from obp_workflow.core.sync import SyncLimits


@dataclass(frozen=True)
class ServicePolicy:
    provisioning_timeout: timedelta = timedelta(minutes=60)
    #: Submissions whose reply was lost, with no job found by tag, before the run fails.
    #: An unreachable cluster never counts: it makes the run STALE, not FAILED.
    max_submit_attempts: int = 5
    #: How long a recorded submission attempt without an outcome holds back another: a second
    #: process (a second worker by mistake, or one restarted after a crash) waits that long
    #: for the job to show up under the run's tag before it submits again.
    submit_lease: timedelta = timedelta(seconds=120)
    cluster_cache_ttl: timedelta = timedelta(seconds=60)
    sync_limits: SyncLimits = field(default_factory=SyncLimits)
    max_log_bytes: int = 256 * 1024
