"""The DataSync policy: which way outputs leave the cluster, and what is refused."""

from __future__ import annotations

from collections import Counter
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obp_workflow.core.cluster import LustreStorage, SharedStorage, Storage
from obp_workflow.core.sync import (
    MAX_S3_KEY_BYTES,
    LustreHsmExport,
    NexusDirectUpload,
    SyncedFile,
    SyncLimits,
    SyncOutcome,
    SyncRefused,
    choose_sync,
)

LIMITS = SyncLimits(direct_upload_max_file_bytes=100, direct_upload_max_total_bytes=250)
SHARED = SharedStorage("/home/sim")

# The platform's layout: FSx mounted at /obi/data, the Nexus DRA at /project.
LUSTRE_STORAGES = st.builds(
    LustreStorage,
    fsx_id=st.just("fs-0123456789abcdef0"),
    mount_path=st.sampled_from(["/obi/data", "/obi/data/", "/fsx"]),
    dra_path=st.sampled_from(["/project", "project", "/project/", "/a/b"]),
    bucket=st.just("nexus-data-bucket"),
    prefix=st.sampled_from(["", "nexus", "/org/proj/", "o/p"]),
)
STORAGES: st.SearchStrategy[Storage] = st.one_of(LUSTRE_STORAGES, st.just(SHARED))

_PART = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.@+=,-", min_size=1, max_size=7
).filter(lambda p: p not in (".", "..") and not p.startswith("-"))
OUTPUT = st.lists(_PART, min_size=1, max_size=3).map("/".join)
OUTPUTS = st.lists(OUTPUT, min_size=1, max_size=6, unique=True)
SIZE = st.integers(0, 150)


def dra_root(storage: Storage) -> str | None:
    return storage.dra_root if isinstance(storage, LustreStorage) else None


@st.composite
def run_folders(draw: st.DrawFn, storage: Storage) -> str:
    """Under the DRA, its parent, beside it (a name sharing its prefix), or elsewhere."""
    root = dra_root(storage) or "/obi/data/project"
    parent = str(PurePosixPath(root).parent)
    return draw(
        st.sampled_from(
            [
                f"{root}/vlab/proj/runs/run-1",
                root,
                parent,
                f"{root}-scratch/runs/run-1",
                f"{root}x/runs/run-1",
                "/home/sim/runs/run-1",
            ]
        )
    )


def under(path: str, root: str) -> bool:
    """Strictly inside ``root`` (an independent oracle: pathlib, not string prefixes)."""
    p, r = PurePosixPath(path), PurePosixPath(root)
    return p != r and p.is_relative_to(r)


def expected_key(storage: LustreStorage, path: str) -> str:
    rel = str(PurePosixPath(path).relative_to(storage.dra_root))
    prefix = storage.prefix.strip("/")
    return f"{prefix}/{rel}" if prefix else rel


@st.composite
def situations(draw: st.DrawFn) -> tuple[Storage, str, list[str], dict[str, int]]:
    storage = draw(STORAGES)
    folder = draw(run_folders(storage))
    outputs = draw(OUTPUTS)
    # Some outputs land under the DRA when the run folder is the DRA's parent.
    root = dra_root(storage)
    if root is not None and draw(st.booleans()):
        leaf = PurePosixPath(root).name
        outputs = list(
            dict.fromkeys([f"{leaf}/{o}" if i % 2 else o for i, o in enumerate(outputs)])
        )
    sizes = {o: draw(SIZE) for o in outputs}
    return storage, folder, outputs, sizes


@given(situations())
def test_every_expected_output_is_covered_exactly_once(
    situation: tuple[Storage, str, list[str], dict[str, int]],
) -> None:
    storage, folder, outputs, sizes = situation

    plan = choose_sync(storage, folder, outputs, sizes, LIMITS)

    if isinstance(plan, SyncRefused):
        return
    assert Counter(f.relative_path for f in plan.files) == Counter(outputs)
    for f in plan.files:
        assert f.cluster_path == str(PurePosixPath(folder) / f.relative_path)
        assert f.size == sizes[f.relative_path]


@given(situations())
def test_lustre_only_when_every_output_is_under_the_dra(
    situation: tuple[Storage, str, list[str], dict[str, int]],
) -> None:
    storage, folder, outputs, sizes = situation
    root = dra_root(storage)
    eligible = root is not None and all(under(f"{folder}/{o}", root) for o in outputs)

    plan = choose_sync(storage, folder, outputs, sizes, LIMITS)

    if eligible:
        assert isinstance(plan, LustreHsmExport | SyncRefused)
        if isinstance(plan, SyncRefused):
            assert "1024" in plan.reason
    else:
        assert not isinstance(plan, LustreHsmExport)


@given(situations())
def test_s3_keys_are_the_prefix_and_the_path_relative_to_the_dra(
    situation: tuple[Storage, str, list[str], dict[str, int]],
) -> None:
    storage, folder, outputs, sizes = situation

    plan = choose_sync(storage, folder, outputs, sizes, LIMITS)

    if isinstance(plan, LustreHsmExport):
        assert isinstance(storage, LustreStorage)
        assert plan.bucket == storage.bucket
        for f in plan.files:
            assert f.s3_key == expected_key(storage, f.cluster_path)
            assert not f.s3_key.startswith("/")
    elif isinstance(plan, NexusDirectUpload):
        assert all(f.s3_key is None for f in plan.files)


@given(situations(), st.data())
def test_missing_outputs_are_refused_by_name(
    situation: tuple[Storage, str, list[str], dict[str, int]], data: st.DataObject
) -> None:
    storage, folder, outputs, sizes = situation
    missing = data.draw(st.lists(st.sampled_from(outputs), min_size=1, unique=True))
    found = {o: s for o, s in sizes.items() if o not in missing}

    plan = choose_sync(storage, folder, outputs, found, LIMITS)

    assert isinstance(plan, SyncRefused)
    assert Counter(plan.offending) == Counter(missing)
    assert "missing" in plan.reason


@given(
    st.one_of(
        st.just(SHARED),
        LUSTRE_STORAGES,  # with a run folder outside its DRA
    ),
    OUTPUTS,
    st.data(),
)
def test_without_lustre_the_direct_upload_limits_apply(
    storage: Storage, outputs: list[str], data: st.DataObject
) -> None:
    folder = "/home/sim/runs/run-1"
    sizes = {o: data.draw(SIZE, label=o) for o in outputs}
    too_big = [o for o in outputs if sizes[o] > LIMITS.direct_upload_max_file_bytes]
    total = sum(sizes.values())

    plan = choose_sync(storage, folder, outputs, sizes, LIMITS)

    if too_big:
        assert isinstance(plan, SyncRefused)
        assert list(plan.offending) == too_big
        assert str(LIMITS.direct_upload_max_file_bytes) in plan.reason
    elif total > LIMITS.direct_upload_max_total_bytes:
        assert isinstance(plan, SyncRefused)
        assert Counter(plan.offending) == Counter(outputs)
        assert str(total) in plan.reason
    else:
        assert isinstance(plan, NexusDirectUpload)


@pytest.mark.parametrize(
    ("sizes", "refused"),
    [
        ({"a": 100, "b": 100}, False),  # each at the file limit, total 200
        ({"a": 101, "b": 1}, True),  # one above the file limit
        ({"a": 100, "b": 100, "c": 50}, False),  # total exactly at the limit
        ({"a": 100, "b": 100, "c": 51}, True),  # total one byte above
    ],
)
def test_direct_upload_limits_are_inclusive(sizes: dict[str, int], refused: bool) -> None:
    plan = choose_sync(SHARED, "/home/sim/runs/r", list(sizes), sizes, LIMITS)

    assert isinstance(plan, SyncRefused) == refused


def test_lustre_ignores_the_direct_upload_limits() -> None:
    storage = LustreStorage("fs-1", "/obi/data", "/project", "bucket")
    sizes = {"huge.h5": 10 * LIMITS.direct_upload_max_total_bytes}

    plan = choose_sync(storage, "/obi/data/project/runs/r", ["huge.h5"], sizes, LIMITS)

    assert isinstance(plan, LustreHsmExport)
    assert plan.files[0].s3_key == "runs/r/huge.h5"


def test_a_sibling_folder_sharing_the_dra_prefix_is_not_under_the_dra() -> None:
    storage = LustreStorage("fs-1", "/obi/data", "/project", "bucket")

    plan = choose_sync(storage, "/obi/data/project2/runs/r", ["a.h5"], {"a.h5": 1}, LIMITS)

    assert isinstance(plan, NexusDirectUpload)


@pytest.mark.parametrize(
    ("prefix", "rel_len", "accepted"),
    [("p", 1020, True), ("pp", 1020, False), ("é", 1019, True), ("éé", 1019, False)],
    ids=["1024-bytes", "1025-bytes", "1024-bytes-multibyte", "1024-chars-but-1026-bytes"],
)
def test_s3_keys_over_1024_bytes_are_refused(prefix: str, rel_len: int, accepted: bool) -> None:
    storage = LustreStorage("fs-1", "/obi/data", "/project", "bucket", prefix=prefix)
    rel = "x" * rel_len
    key = f"{prefix}/r/{rel}"
    assert (len(key.encode()) <= MAX_S3_KEY_BYTES) == accepted

    plan = choose_sync(storage, "/obi/data/project/r", [rel, "a.h5"], {rel: 1, "a.h5": 1}, LIMITS)

    if accepted:
        assert isinstance(plan, LustreHsmExport)
        assert plan.files[0].s3_key == key
    else:
        assert isinstance(plan, SyncRefused)
        assert plan.offending == (rel,)


# ---------------------------------------------------------------------------- SyncOutcome

SYNCED_FILES = st.builds(
    SyncedFile,
    relative_path=st.text(),
    size=st.integers(0, 2**62),
    location=st.text(),
    digest=st.one_of(
        st.none(), st.text(alphabet="0123456789abcdef", max_size=64).map("sha256:".__add__)
    ),
)


@given(st.sampled_from(["lustre-hsm", "nexus-upload"]), st.lists(SYNCED_FILES, max_size=5))
def test_sync_outcome_round_trips_through_json(kind: str, files: list[SyncedFile]) -> None:
    outcome = SyncOutcome(kind, tuple(files))

    assert SyncOutcome.from_json(outcome.to_json()) == outcome
