"""The direct upload into Nexus (``NexusUploadSynchronizer``) on the real stack, beyond the
DataSynchronizer contract: the ways a file fails to land, and what a retry sends again."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from obp_workflow.adapters.nexus.client import NexusRefusal
from obp_workflow.core.cluster import ClusterHandle
from obp_workflow.core.errors import ServiceUnavailable, SyncIncomplete
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import LustreHsmExport, NexusDirectUpload, SyncFile, SyncOutcome
from tests.contract.harness_nexus import MAX_ATTEMPTS
from tests.contract.harness_sync import NexusUploadSynchronizerHarness

pytestmark = pytest.mark.stack

OUTPUTS = ("spikes.dat", "reports/soma.h5", "x")


@pytest.fixture
def h() -> Iterator[NexusUploadSynchronizerHarness]:
    harness = NexusUploadSynchronizerHarness()
    try:
        yield harness
    finally:
        harness.close()


@pytest.fixture
def fetches(h: NexusUploadSynchronizerHarness, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The outputs read from the cluster, in order."""
    seen: list[str] = []
    real = h.gateway.fetch_output

    def counting(cluster: ClusterHandle, run_folder: str, path: str) -> Iterator[bytes]:
        seen.append(path)
        return real(cluster, run_folder, path)

    monkeypatch.setattr(h.gateway, "fetch_output", counting)
    return seen


def started(
    h: NexusUploadSynchronizerHarness, header: RunHeader, plan: NexusDirectUpload
) -> SyncOutcome:
    outcome = h.sync.start(h.cluster, header, plan, 1)
    assert isinstance(outcome, SyncOutcome)
    return outcome


def direct(plan: object) -> NexusDirectUpload:
    assert isinstance(plan, NexusDirectUpload)
    return plan


def test_locations_are_nexus_file_ids_and_digests_are_the_contents_sha256(
    h: NexusUploadSynchronizerHarness,
) -> None:
    header, plan = h.run_simulation(OUTPUTS)
    outcome = started(h, header, direct(plan))
    cluster_paths = {f.relative_path: f.cluster_path for f in direct(plan).files}
    for f in outcome.files:
        assert f.location == h.file_id(header, f.relative_path)
        content = Path(cluster_paths[f.relative_path]).read_bytes()
        assert f.digest == "sha256:" + hashlib.sha256(content).hexdigest()
        assert h.file_content(header, f.relative_path) == content
    assert h.sync.confirm(h.cluster, header, plan) == outcome


def test_an_output_missing_on_the_cluster_is_named_and_the_others_land(
    h: NexusUploadSynchronizerHarness,
) -> None:
    header, plan = h.run_simulation(OUTPUTS)
    (gone,) = [f for f in direct(plan).files if f.relative_path == "reports/soma.h5"]
    Path(gone.cluster_path).unlink()
    outcome = started(h, header, direct(plan))
    assert sorted(f.relative_path for f in outcome.files) == ["spikes.dat", "x"]
    with pytest.raises(SyncIncomplete) as caught:
        h.sync.confirm(h.cluster, header, plan)
    assert caught.value.offending == ("reports/soma.h5",)
    assert "reports/soma.h5 (absent)" in str(caught.value)
    assert h.stored(header) == 2


def test_an_output_of_another_size_than_planned_is_not_uploaded(
    h: NexusUploadSynchronizerHarness,
) -> None:
    header, plan = h.run_simulation(OUTPUTS)
    (grown,) = [f for f in direct(plan).files if f.relative_path == "x"]
    with Path(grown.cluster_path).open("ab") as out:
        out.write(b"more")
    outcome = started(h, header, direct(plan))
    assert "x" not in {f.relative_path for f in outcome.files}
    with pytest.raises(SyncIncomplete) as caught:
        h.sync.confirm(h.cluster, header, plan)
    assert caught.value.offending == ("x",)


def test_a_file_whose_upload_never_lands_is_named_by_confirm(
    h: NexusUploadSynchronizerHarness,
) -> None:
    header, plan = h.run_simulation(OUTPUTS)
    h.fail_uploads(header, "spikes.dat")
    outcome = started(h, header, direct(plan))
    assert sorted(f.relative_path for f in outcome.files) == ["reports/soma.h5", "x"]
    with pytest.raises(SyncIncomplete) as caught:
        h.sync.confirm(h.cluster, header, plan)
    assert caught.value.offending == ("spikes.dat",)
    assert "spikes.dat" in str(caught.value)
    assert h.file_content(header, "spikes.dat") is None


def test_a_retried_start_sends_only_what_is_not_there(
    h: NexusUploadSynchronizerHarness, fetches: list[str]
) -> None:
    header, plan = h.run_simulation(OUTPUTS)
    h.fail_uploads(header, "reports/soma.h5", times=MAX_ATTEMPTS)  # the first start only
    started(h, header, direct(plan))
    assert h.transfers() == 2
    with pytest.raises(SyncIncomplete):
        h.sync.confirm(h.cluster, header, plan)
    fetches.clear()
    again = started(h, header, direct(plan))
    assert h.transfers() == 3, "only the missing file is sent"
    assert fetches == ["reports/soma.h5"], "files already in Nexus are not read from the cluster"
    assert h.sync.confirm(h.cluster, header, plan) == again
    fetches.clear()
    assert started(h, header, direct(plan)) == again
    assert h.transfers() == 3
    assert fetches == []


def test_nexus_failing_on_every_file_is_unavailable_not_an_empty_outcome(
    h: NexusUploadSynchronizerHarness,
) -> None:
    header, plan = h.run_simulation(OUTPUTS)
    for path in OUTPUTS:
        h.fail_uploads(header, path)
    with pytest.raises(ServiceUnavailable):
        h.sync.start(h.cluster, header, plan, 1)
    assert h.stored(header) == 0


def test_nexus_refusing_the_service_stops_the_sync(h: NexusUploadSynchronizerHarness) -> None:
    header, plan = h.run_simulation(OUTPUTS)
    h.server.fail_next(1, status=403, match=lambda method, path: method == "PUT")
    with pytest.raises(NexusRefusal):
        h.sync.start(h.cluster, header, plan, 1)


def test_a_lustre_plan_is_a_programming_error(h: NexusUploadSynchronizerHarness) -> None:
    header, plan = h.run_simulation(("x",))
    lustre = LustreHsmExport(
        "bucket",
        tuple(dataclasses.replace(f, s3_key=f"k/{f.relative_path}") for f in direct(plan).files),
    )
    assert all(isinstance(f, SyncFile) for f in lustre.files)
    with pytest.raises(TypeError):
        h.sync.start(h.cluster, header, lustre, 1)
    with pytest.raises(TypeError):
        h.sync.confirm(h.cluster, header, lustre)
