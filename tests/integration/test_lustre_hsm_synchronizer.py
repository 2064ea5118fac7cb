"""The Lustre HSM synchronizer's bad cases on the real stack (the ``lfs`` fixture, moto S3).

The shared DataSynchronizer suite covers the contract; these cover what only the HSM has: a file
missing or changed on the cluster, an archive that says "done" with no object behind it, and a
lost sbatch reply of the elevated job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from obp_workflow.core.errors import SyncIncomplete
from obp_workflow.core.sync import (
    LustreHsmExport,
    SyncFile,
    SyncLimits,
    SyncPlan,
    SyncRefused,
    choose_sync,
)
from obp_workflow.ports.sync import SyncJobSubmitted
from tests.contract.harness_sync import LustreHsmSynchronizerHarness
from tests.stack import job_state, stack, wait_until

pytestmark = pytest.mark.stack

OUTPUTS = ("spikes.dat", "reports/soma.h5")


@pytest.fixture
def h() -> Iterator[LustreHsmSynchronizerHarness]:
    harness = LustreHsmSynchronizerHarness()
    try:
        yield harness
    finally:
        harness.close()


def _submitted(h: LustreHsmSynchronizerHarness, started: object) -> str:
    assert isinstance(started, SyncJobSubmitted)
    return started.job_id


def test_an_output_missing_on_the_cluster_is_refused_before_any_job(
    h: LustreHsmSynchronizerHarness,
) -> None:
    header, plan = h.run_simulation(OUTPUTS)
    Path(plan.files[1].cluster_path).unlink()
    folder = h.cluster.run_folder(header.run_id)
    found = {f.path: f.size for f in h.gateway.list_outputs(h.cluster, folder)}
    refused = choose_sync(h.cluster.storage, folder, list(OUTPUTS), found, SyncLimits())
    assert isinstance(refused, SyncRefused)
    assert refused.offending == ("reports/soma.h5",)
    assert h.sync_jobs(header) == 0


def test_an_output_removed_after_planning_fails_the_job_and_is_named(
    h: LustreHsmSynchronizerHarness,
) -> None:
    header, plan = h.run_simulation(OUTPUTS)
    Path(plan.files[0].cluster_path).unlink()
    job_id = _submitted(h, h.sync.start(h.cluster, header, plan, 1))
    h.let_sync_job_finish(job_id)
    assert job_state(job_id) == "FAILED"
    assert "NOT ARCHIVED" in h.job_log(header, 1)
    with pytest.raises(SyncIncomplete) as caught:
        h.sync.confirm(h.cluster, header, plan)
    assert caught.value.offending == ("spikes.dat",)


def test_an_archive_without_its_object_is_named_by_confirm(h: LustreHsmSynchronizerHarness) -> None:
    """The HSM says "archived" (the job succeeds) but the object never appears: the bucket
    decides."""
    header, plan = h.run_simulation(OUTPUTS)
    h.switch("never", plan.files[1].cluster_path, "lost")
    job_id = _submitted(h, h.sync.start(h.cluster, header, plan, 1))
    h.let_sync_job_finish(job_id)
    assert job_state(job_id) == "COMPLETED"
    with pytest.raises(SyncIncomplete) as caught:
        h.sync.confirm(h.cluster, header, plan)
    assert caught.value.offending == ("reports/soma.h5",)
    assert "reports/soma.h5" in str(caught.value)


def test_a_file_changed_during_its_archive_fails_the_attempt_and_the_next_archives_again(
    h: LustreHsmSynchronizerHarness,
) -> None:
    header, plan = h.run_simulation(OUTPUTS)
    changed = plan.files[0]
    h.switch("slow", changed.cluster_path, "3")
    job_id = _submitted(h, h.sync.start(h.cluster, header, plan, 1))
    wait_until(lambda: _archiving(h, changed), 60, "the archive of spikes.dat to start")
    with open(changed.cluster_path, "ab") as out:  # the simulation's file grows meanwhile
        out.write(b"-more-data")
    h.let_sync_job_finish(job_id)
    assert job_state(job_id) == "FAILED"
    assert f"DIRTY (changed during or after its archive): {changed.cluster_path}" in (
        h.job_log(header, 1)
    )
    # The service plans again from the cluster's sizes: the object is the older version.
    replanned = _replan(h, plan)
    with pytest.raises(SyncIncomplete) as caught:
        h.sync.confirm(h.cluster, header, replanned)
    assert caught.value.offending == ("spikes.dat",)

    h.clear_switch("slow", changed.cluster_path)
    second = _submitted(h, h.sync.start(h.cluster, header, replanned, 2))
    assert second != job_id
    h.let_sync_job_finish(second)
    assert job_state(second) == "COMPLETED"
    outcome = h.sync.confirm(h.cluster, header, replanned)
    assert {f.relative_path: f.size for f in outcome.files} == {
        f.relative_path: f.size for f in replanned.files
    }
    assert changed.s3_key is not None
    assert h.object_bytes(changed.s3_key) == Path(changed.cluster_path).read_bytes()


def test_a_lost_sbatch_reply_of_the_elevated_job_adopts_it(h: LustreHsmSynchronizerHarness) -> None:
    header, plan = h.run_simulation(OUTPUTS)
    flag = Path(stack().home("admin")) / ".obp-test-cut-after-sbatch"
    flag.touch()
    shutil.chown(flag, stack().user("admin"))
    try:
        job_id = _submitted(h, h.sync.start(h.cluster, header, plan, 1))
    finally:
        flag.unlink(missing_ok=True)
    assert h.sync_jobs(header) == 1
    h.let_sync_job_finish(job_id)
    assert h.sync.confirm(h.cluster, header, plan).kind == "lustre-hsm"


def test_the_job_quotes_every_path_and_stays_in_the_run_folder(
    h: LustreHsmSynchronizerHarness,
) -> None:
    header, plan = h.run_simulation(("odd=1,2@x+y.dat", "dir/x-"))
    assert isinstance(plan, LustreHsmExport)
    job_id = _submitted(h, h.sync.start(h.cluster, header, plan, 1))
    h.let_sync_job_finish(job_id)
    h.sync.confirm(h.cluster, header, plan)
    escaped = dataclasses.replace(
        plan,
        files=(SyncFile("../../etc/passwd", "/etc/passwd", 1, "x"),),
    )
    with pytest.raises(Exception, match="inside the run folder"):
        h.sync.start(h.cluster, header, escaped, 2)


def _archiving(h: LustreHsmSynchronizerHarness, file: SyncFile) -> bool:
    """The fixture's copytool has started on the file (it snapshots the file first)."""
    state = (
        h.state_dir / "files" / (hashlib.sha256(file.cluster_path.encode()).hexdigest() + ".json")
    )
    try:
        return bool(json.loads(state.read_text()).get("pid"))
    except (OSError, ValueError):
        return False


def _replan(h: LustreHsmSynchronizerHarness, plan: SyncPlan) -> LustreHsmExport:
    """The plan the service makes at its next cycle, from what the cluster lists now."""
    folder = posixpath.dirname(plan.files[0].cluster_path)
    found = {f.path: f.size for f in h.gateway.list_outputs(h.cluster, folder)}
    expected = [f.relative_path for f in plan.files]
    again = choose_sync(h.cluster.storage, folder, expected, found, SyncLimits())
    assert isinstance(again, LustreHsmExport)
    return again
