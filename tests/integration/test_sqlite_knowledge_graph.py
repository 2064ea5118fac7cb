"""The local knowledge graph beyond its contract: several processes on one home, uploads cut
midway, paths that try to leave their folder, and the run's files in the documents."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from obp_workflow.adapters.local.knowledge_graph import SqliteKnowledgeGraph
from obp_workflow.adapters.local.object_store import FileObjectStore
from obp_workflow.core.errors import ClusterUnreachable, InvalidRequest, SyncIncomplete
from obp_workflow.core.sync import SyncedFile, SyncOutcome
from obp_workflow.ports.knowledge_graph import RunProvenance
from tests.contract.harness import PROJECT_A, T0, make_header
from tests.contract.test_knowledge_graph_contract import provenance

RACED_RUN = "run-raced-0001"
ROUNDS = 15


def _rows(home: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(home / "graph.sqlite")
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


# ==================================================================== several processes


def _register_rounds(home: str, worker: int) -> None:
    """Register the raced run ROUNDS times, alternating two versions of it (a later end), and
    one run of this worker's own."""
    graph = SqliteKnowledgeGraph(home)
    try:
        base = provenance(PROJECT_A, RACED_RUN)
        for n in range(ROUNDS):
            ended = base.ended_at + timedelta(seconds=(worker * 2 + n % 2))
            graph.register(dataclasses.replace(base, ended_at=ended))
        graph.register(provenance(PROJECT_A, f"run-own-{worker}"))
    finally:
        graph.close()


def test_two_processes_registering_at_once_leave_one_activity_with_consistent_revisions(
    tmp_path: Path,
) -> None:
    SqliteKnowledgeGraph(tmp_path).close()  # the layout, before the race
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_register_rounds, args=(str(tmp_path), w)) for w in (1, 2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
    assert [p.exitcode for p in workers] == [0, 0]

    graph = SqliteKnowledgeGraph(tmp_path)
    header = make_header(PROJECT_A, RACED_RUN)
    act = graph.activity_id(header.project, header.run_id)
    raced = graph.read(header)
    assert raced is not None
    # One resource per id: the activity and its three entities, plus each worker's own run.
    assert _rows(tmp_path, "SELECT COUNT(*) FROM resources WHERE run_id = ?", RACED_RUN) == [(4,)]
    assert _rows(tmp_path, "SELECT COUNT(*) FROM resources") == [(12,)]
    # Every revision is there, numbered 1..N without a gap, each one a change, the last one the
    # resource's current document.
    history = _rows(tmp_path, "SELECT rev, document FROM revisions WHERE id = ? ORDER BY rev", act)
    assert [rev for rev, _ in history] == list(range(1, len(history) + 1))
    assert all(a[1] != b[1] for a, b in itertools.pairwise(history))
    ((rev, current),) = _rows(tmp_path, "SELECT rev, document FROM resources WHERE id = ?", act)
    assert rev == raced.revision == len(history)
    assert current == history[-1][1]
    assert 2 <= rev <= 2 * ROUNDS
    # The entities did not change (only the end did): each kept its first revision.
    assert {e["_rev"] for e in raced.entities} == {1}
    ended = json.loads(str(current))["endedAtTime"]
    assert ended in {
        (T0 + timedelta(hours=2, seconds=s)).isoformat().replace("+00:00", "Z") for s in range(6)
    }
    graph.close()


# ==================================================================== uploads


@pytest.fixture
def graph(tmp_path: Path) -> Iterator[SqliteKnowledgeGraph]:
    found = SqliteKnowledgeGraph(tmp_path)
    yield found
    found.close()


def _cut_after(chunks: list[bytes]) -> Iterator[bytes]:
    yield from chunks
    raise ClusterUnreachable("the connection to the cluster was lost")


def test_an_upload_cut_midway_leaves_no_partial_file(graph: SqliteKnowledgeGraph) -> None:
    header = make_header(PROJECT_A)
    with pytest.raises(ClusterUnreachable):
        graph.upload_file(header, "reports/soma.h5", _cut_after([b"a" * 1000, b"b" * 1000]), 5000)
    assert graph.file_info(header, "reports/soma.h5") is None
    assert _files_under(graph.home / "files") == []
    assert _rows(graph.home, "SELECT COUNT(*) FROM files") == [(0,)]


def test_an_upload_cut_midway_keeps_the_previous_content(graph: SqliteKnowledgeGraph) -> None:
    header = make_header(PROJECT_A)
    first = graph.upload_file(header, "spikes.dat", [b"first content"], 13)
    with pytest.raises(ClusterUnreachable):
        graph.upload_file(header, "spikes.dat", _cut_after([b"second"]), 13)
    with pytest.raises(SyncIncomplete, match="holds 6 bytes, not the 13 announced"):
        graph.upload_file(header, "spikes.dat", [b"second"], 13)
    assert graph.file_info(header, "spikes.dat") == first
    (path,) = _files_under(graph.home / "files")
    assert path.read_bytes() == b"first content"
    assert path.as_uri() == first.address


def test_the_same_content_again_writes_nothing_and_new_content_is_a_revision(
    graph: SqliteKnowledgeGraph,
) -> None:
    header = make_header(PROJECT_A)
    first = graph.upload_file(header, "x", iter([b"abc", b"def"]), 6)
    inode = os.stat(Path(first.address.removeprefix("file://"))).st_ino
    again = graph.upload_file(header, "x", [b"abcdef"], 6)
    assert again == first
    assert os.stat(Path(first.address.removeprefix("file://"))).st_ino == inode
    changed = graph.upload_file(header, "x", [b"ABCDEF"], 6)
    assert (changed.rev, changed.digest != first.digest) == (2, True)


@pytest.mark.parametrize(
    "path", ["../escape", "/etc/passwd", "a/../../escape", "a\x00b", "", "a//b", "./a", "a/"]
)
def test_paths_that_leave_the_run_folder_are_refused(
    graph: SqliteKnowledgeGraph, tmp_path: Path, path: str
) -> None:
    header = make_header(PROJECT_A)
    with pytest.raises(InvalidRequest, match="relative_path: must stay inside"):
        graph.upload_file(header, path, [b"x"], 1)
    with pytest.raises(InvalidRequest):
        graph.file_info(header, path)
    assert _files_under(tmp_path / "files") == []
    assert not (tmp_path.parent / "escape").exists()


def test_a_run_id_that_is_no_plain_name_is_refused(graph: SqliteKnowledgeGraph) -> None:
    for run_id in ("..", "a/b", "../../x"):
        header = make_header(PROJECT_A, run_id)
        with pytest.raises(InvalidRequest, match="run_id"):
            graph.upload_file(header, "x", [b"x"], 1)


def test_a_run_folder_that_is_a_link_elsewhere_is_refused(
    graph: SqliteKnowledgeGraph, tmp_path: Path
) -> None:
    header = make_header(PROJECT_A)
    outside = tmp_path / "outside"
    outside.mkdir()
    project = graph.home / "files" / PROJECT_A.virtual_lab_id / PROJECT_A.project_id
    project.mkdir(parents=True)
    (project / header.run_id).symlink_to(outside)
    with pytest.raises(InvalidRequest):
        graph.upload_file(header, "x", [b"x"], 1)
    assert list(outside.iterdir()) == []
    assert _files_under(graph.home / "files" / ".partial") == []


def test_object_keys_and_buckets_that_leave_their_folder_are_refused(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "objects")
    bucket = tmp_path / "objects" / "obp-data"
    bucket.mkdir(parents=True)
    (tmp_path / "secret").write_bytes(b"secret")
    (bucket / "link").symlink_to(tmp_path / "secret")
    (bucket / "folder").symlink_to(tmp_path)
    for key in ("../secret", "/etc/passwd", "a/../../secret", "a\x00b", "a//b"):
        with pytest.raises(InvalidRequest):
            store.head("obp-data", key)
    for bucket_name in ("..", "../objects", "a/b", "UPPER"):
        with pytest.raises(InvalidRequest):
            store.head(bucket_name, "x")
    # Symbolic links lead nowhere: neither the link itself nor a file through a linked folder.
    assert store.head("obp-data", "link") is None
    assert store.head("obp-data", "folder/secret") is None
    assert list(store.list("obp-data", "")) == []


# ==================================================================== the run's files in the graph


def test_an_uploaded_output_is_linked_from_its_entity(graph: SqliteKnowledgeGraph) -> None:
    header = make_header(PROJECT_A)
    stored = graph.upload_file(header, "spikes.dat", [b"spikes"], 6)
    outcome = SyncOutcome("nexus-direct-upload", (stored.synced("spikes.dat"),))
    base = provenance(PROJECT_A, header.run_id, outputs=())
    graph.register(dataclasses.replace(base, header=header, outcome=outcome))
    recorded = graph.read(header)
    assert recorded is not None
    (entity,) = recorded.entities
    download = entity["distribution"]
    assert download["contentUrl"] == stored.address
    assert download["digest"]["value"] == (stored.digest or "").removeprefix("sha256:")
    assert Path(stored.address.removeprefix("file://")).read_bytes() == b"spikes"
    graph.withdraw(header)
    assert graph.file_info(header, "spikes.dat") is None


def test_an_output_in_the_bucket_whose_key_is_also_a_folder_is_linked(tmp_path: Path) -> None:
    objects = FileObjectStore(tmp_path / "objects")
    graph = SqliteKnowledgeGraph(tmp_path, storage_bucket="obp-graph", objects=objects)
    header = make_header(PROJECT_A)
    folder = tmp_path / "objects" / "obp-graph" / "runs" / "r"
    folder.mkdir(parents=True)
    (folder / ".obp-object").write_bytes(b"12345")
    (folder / "inner.h5").write_bytes(b"inner")
    files = (
        SyncedFile("r", 5, "s3://obp-graph/runs/r"),
        SyncedFile("inner.h5", 5, "s3://obp-graph/runs/r/inner.h5"),
    )
    prov: RunProvenance = dataclasses.replace(
        provenance(PROJECT_A, header.run_id, outputs=()),
        header=header,
        outcome=SyncOutcome("lustre-hsm", files),
    )
    graph.register(prov)
    recorded = graph.read(header)
    assert recorded is not None
    urls = sorted(e["distribution"]["contentUrl"] for e in recorded.entities)
    assert urls == sorted([(folder / ".obp-object").as_uri(), (folder / "inner.h5").as_uri()])
    assert [i.key for i in objects.list("obp-graph", "runs/")] == ["runs/r", "runs/r/inner.h5"]
    graph.close()


def test_temporary_files_of_writers_that_died_long_ago_are_swept(tmp_path: Path) -> None:
    partial = tmp_path / "files" / ".partial"
    partial.mkdir(parents=True)
    old, fresh = partial / "old.part", partial / "fresh.part"
    old.write_bytes(b"left by a writer that died")
    fresh.write_bytes(b"being written right now")
    os.utime(old, (1_000_000_000, 1_000_000_000))
    SqliteKnowledgeGraph(tmp_path).close()
    assert sorted(p.name for p in partial.iterdir()) == ["fresh.part"]


def test_an_object_rewritten_in_place_gets_its_new_etag(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path)
    path = tmp_path / "obp-data" / "a.dat"
    path.parent.mkdir()
    path.write_bytes(b"first")
    first = store.head("obp-data", "a.dat")
    assert first is not None
    assert store.head("obp-data", "a.dat") == first
    with path.open("r+b") as f:
        f.write(b"FIRST")
    later = store.head("obp-data", "a.dat")
    assert later is not None
    assert later.etag != first.etag
    assert later.etag == hashlib.md5(b"FIRST", usedforsecurity=False).hexdigest()
