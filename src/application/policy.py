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
    cluster_cache_ttl: timedelta = timedelta(seconds=60)
    sync_limits: SyncLimits = field(default_factory=SyncLimits)
    max_log_bytes: int = 256 * 1024
