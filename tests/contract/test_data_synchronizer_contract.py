"""The DataSynchronizer contract, for both ways out of a cluster: Lustre HSM and direct upload."""

from __future__ import annotations

import pytest

from obp_workflow.core.errors import SyncIncomplete
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import LustreHsmExport, NexusDirectUpload, SyncOutcome, SyncPlan
from obp_workflow.ports.sync import SyncJobSubmitted, SyncStart
from tests.contract.harness import DataSynchronizerHarness

OUTPUTS = ("spikes.dat", "reports/soma.h5", "reports/deep/membrane-voltage.bin", "x")


def start(
    h: DataSynchronizerHarness, header: RunHeader, plan: SyncPlan, attempt: int = 1
) -> SyncStart:
    started = h.sync.start(h.cluster, header, plan, attempt)
    if isinstance(plan, LustreHsmExport):
        assert isinstance(started, SyncJobSubmitted), "a Lustre export runs as a job"
        assert started.job_id
    else:
        assert isinstance(plan, NexusDirectUpload)
        assert isinstance(started, SyncOutcome), "a direct upload is done when start returns"
    return started


def start_and_wait(
    h: DataSynchronizerHarness, header: RunHeader, plan: SyncPlan, attempt: int = 1
) -> None:
    started = start(h, header, plan, attempt)
    if isinstance(started, SyncJobSubmitted):
        h.let_sync_job_finish(started.job_id)


def assert_covers(outcome: SyncOutcome, plan: SyncPlan) -> None:
    """Every planned file exactly once, with its size, at a location of its own."""
    assert outcome.kind == plan.kind
    paths = [f.relative_path for f in outcome.files]
    assert sorted(paths) == sorted(f.relative_path for f in plan.files)
    planned = {f.relative_path: f.size for f in plan.files}
    assert {f.relative_path: f.size for f in outcome.files} == planned
    locations = [f.location for f in outcome.files]
    assert all(locations)
    assert len(set(locations)) == len(locations)


def test_the_plan_has_distinct_sizes(data_synchronizer_harness: DataSynchronizerHarness) -> None:
    """A precondition of the size checks below: outputs do not all have the same size."""
    _header, plan = data_synchronizer_harness.run_simulation(OUTPUTS)
    assert len({f.size for f in plan.files}) == len(OUTPUTS)


def test_start_then_confirm_covers_every_planned_file_once(
    data_synchronizer_harness: DataSynchronizerHarness,
) -> None:
    h = data_synchronizer_harness
    header, plan = h.run_simulation(OUTPUTS)
    started = start(h, header, plan)
    if isinstance(started, SyncOutcome):
        assert_covers(started, plan)
    else:
        h.let_sync_job_finish(started.job_id)
    outcome = h.sync.confirm(h.cluster, header, plan)
    assert_covers(outcome, plan)
    assert h.stored(header) == len(OUTPUTS)
    if isinstance(plan, LustreHsmExport):
        keys = {f.relative_path: f.s3_key for f in plan.files}
        for f in outcome.files:
            assert f.location == f"s3://{plan.bucket}/{keys[f.relative_path]}"


def test_confirm_before_anything_moved_names_every_file(
    data_synchronizer_harness: DataSynchronizerHarness,
) -> None:
    h = data_synchronizer_harness
    header, plan = h.run_simulation(OUTPUTS)
    with pytest.raises(SyncIncomplete) as caught:
        h.sync.confirm(h.cluster, header, plan)
    assert sorted(caught.value.offending) == sorted(OUTPUTS)


@pytest.mark.parametrize("blocked", ["reports/soma.h5", "x"])
def test_a_file_that_never_reaches_its_destination_is_named_alone(
    data_synchronizer_harness: DataSynchronizerHarness, blocked: str
) -> None:
    h = data_synchronizer_harness
    header, plan = h.run_simulation(OUTPUTS)
    h.block(header, plan, blocked)
    start_and_wait(h, header, plan)
    with pytest.raises(SyncIncomplete) as caught:
        h.sync.confirm(h.cluster, header, plan)
    assert caught.value.offending == (blocked,)
    assert blocked in str(caught.value)
    assert h.stored(header) == len(OUTPUTS) - 1


def test_a_retried_start_of_the_same_attempt_moves_nothing_twice(
    data_synchronizer_harness: DataSynchronizerHarness,
) -> None:
    h = data_synchronizer_harness
    header, plan = h.run_simulation(OUTPUTS)
    first = start(h, header, plan)
    second = start(h, header, plan)
    if isinstance(first, SyncJobSubmitted):
        assert second == first, "the same attempt is the same sync job"
        assert h.sync_jobs(header) == 1
        h.let_sync_job_finish(first.job_id)
    else:
        assert second == first
    assert h.stored(header) == len(OUTPUTS)
    assert_covers(h.sync.confirm(h.cluster, header, plan), plan)
    assert h.sync_jobs(header) == (1 if isinstance(plan, LustreHsmExport) else 0)


def test_a_retried_start_after_success_transfers_nothing_already_there(
    data_synchronizer_harness: DataSynchronizerHarness,
) -> None:
    """Lustre: no second archive job; direct upload: files there with the same digest are
    skipped (the port's word), not sent again."""
    h = data_synchronizer_harness
    header, plan = h.run_simulation(OUTPUTS)
    start_and_wait(h, header, plan)
    outcome = h.sync.confirm(h.cluster, header, plan)
    transfers = h.transfers()
    assert transfers >= len(OUTPUTS)
    again = start(h, header, plan)
    if isinstance(again, SyncJobSubmitted):
        h.let_sync_job_finish(again.job_id)
    assert h.transfers() == transfers
    assert h.sync.confirm(h.cluster, header, plan) == outcome


def test_runs_do_not_share_destinations(data_synchronizer_harness: DataSynchronizerHarness) -> None:
    h = data_synchronizer_harness
    header, plan = h.run_simulation(OUTPUTS)
    h.block(header, plan, "spikes.dat")
    start_and_wait(h, header, plan)
    other_header, other_plan = h.run_simulation(("spikes.dat",))
    start_and_wait(h, other_header, other_plan)
    assert_covers(h.sync.confirm(h.cluster, other_header, other_plan), other_plan)
    with pytest.raises(SyncIncomplete) as caught:
        h.sync.confirm(h.cluster, header, plan)
    assert caught.value.offending == ("spikes.dat",)
