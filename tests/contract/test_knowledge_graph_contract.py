"""The KnowledgeGraph contract: ids derived from the run, so registering again never duplicates."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta

import pytest

from obp_workflow.core.errors import ServiceUnavailable, SyncIncomplete
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.sync import SyncedFile, SyncOutcome
from obp_workflow.ports.knowledge_graph import RunProvenance
from tests.contract.harness import (
    GRAPH_BUCKET,
    PROJECT_A,
    PROJECT_B,
    T0,
    KnowledgeGraphHarness,
    make_header,
)

OUTPUTS = ("spikes.dat", "reports/soma.h5", "reports/deep/v.bin")


def provenance(
    project: ProjectRef = PROJECT_A, run_id: str | None = None, outputs: tuple[str, ...] = OUTPUTS
) -> RunProvenance:
    header = make_header(project, run_id)
    files = tuple(
        SyncedFile(
            path,
            100 + i,
            f"s3://nexus-data-bucket/{header.run_id}/{path}",
            f"sha256:{i:064x}",
        )
        for i, path in enumerate(outputs)
    )
    return RunProvenance(
        header=header,
        cluster_name="pcluster-aaaaaaaa",
        job_id="4242",
        started_at=T0 + timedelta(minutes=1),
        ended_at=T0 + timedelta(hours=2),
        outcome=SyncOutcome("lustre-hsm", files),
        exit_code=0,
    )


def test_register_returns_the_activity_and_one_entity_per_output(
    knowledge_graph_harness: KnowledgeGraphHarness,
) -> None:
    h = knowledge_graph_harness
    reg = h.graph.register(provenance())
    assert reg.activity_id
    assert len(reg.entity_ids) == len(OUTPUTS)
    assert len(set(reg.entity_ids)) == len(OUTPUTS)
    assert reg.activity_id not in reg.entity_ids
    for ident in (reg.activity_id, *reg.entity_ids):
        assert h.revision(ident) is not None, f"{ident} was not recorded"


def test_a_run_without_outputs_registers_its_activity_only(
    knowledge_graph_harness: KnowledgeGraphHarness,
) -> None:
    h = knowledge_graph_harness
    reg = h.graph.register(provenance(outputs=()))
    assert reg.activity_id
    assert list(reg.entity_ids) == []
    assert h.revision(reg.activity_id) is not None


def test_registering_the_same_run_again_creates_nothing_new(
    knowledge_graph_harness: KnowledgeGraphHarness,
) -> None:
    h = knowledge_graph_harness
    prov = provenance()
    first = h.graph.register(prov)
    creations = h.creations()
    revisions = {i: h.revision(i) for i in (first.activity_id, *first.entity_ids)}
    content = h.snapshot()
    second = h.graph.register(prov)
    assert second.activity_id == first.activity_id
    assert list(second.entity_ids) == list(first.entity_ids)
    assert h.creations() == creations
    for ident, rev in revisions.items():
        assert rev is not None
        # An update may or may not write a revision (Delta >= 1.9 writes none when nothing
        # changed); it never goes back.
        assert (h.revision(ident) or 0) >= rev, f"{ident} went back"
    assert h.snapshot() == content


def test_a_lost_reply_then_a_retry_leaves_the_fault_free_graph(
    knowledge_graph_factory: Callable[[], KnowledgeGraphHarness],
) -> None:
    prov = provenance()
    clean = knowledge_graph_factory()
    expected = clean.graph.register(prov)
    faulty = knowledge_graph_factory()
    faulty.lose_next_register_reply(ServiceUnavailable("the knowledge graph did not answer"))
    with pytest.raises(ServiceUnavailable):
        faulty.graph.register(prov)
    got = faulty.graph.register(prov)
    assert got.activity_id == expected.activity_id
    assert list(got.entity_ids) == list(expected.entity_ids)
    assert faulty.snapshot() == clean.snapshot()
    assert faulty.creations() == clean.creations()


def test_ids_belong_to_their_run_and_project(
    knowledge_graph_harness: KnowledgeGraphHarness,
) -> None:
    h = knowledge_graph_harness
    one = h.graph.register(provenance(PROJECT_A, "run-00000001"))
    other_run = h.graph.register(provenance(PROJECT_A, "run-00000002"))
    other_project = h.graph.register(provenance(PROJECT_B, "run-00000001"))
    ids = [{r.activity_id, *r.entity_ids} for r in (one, other_run, other_project)]
    assert ids[0].isdisjoint(ids[1])
    assert ids[0].isdisjoint(ids[2])
    assert ids[1].isdisjoint(ids[2])
    assert h.creations() == 3 * (1 + len(OUTPUTS))


def test_withdraw_marks_what_a_run_registered_and_only_that(
    knowledge_graph_harness: KnowledgeGraphHarness,
) -> None:
    h = knowledge_graph_harness
    mine, other = provenance(), provenance()
    reg = h.graph.register(mine)
    kept = h.graph.register(other)
    h.graph.withdraw(mine.header)
    h.graph.withdraw(mine.header)  # idempotent
    for ident in (reg.activity_id, *reg.entity_ids):
        assert h.withdrawn(ident), ident
    for ident in (kept.activity_id, *kept.entity_ids):
        assert not h.withdrawn(ident), ident


def test_withdrawing_a_run_that_registered_nothing_changes_nothing(
    knowledge_graph_harness: KnowledgeGraphHarness,
) -> None:
    h = knowledge_graph_harness
    h.graph.register(provenance())
    before = h.snapshot()
    h.graph.withdraw(make_header(PROJECT_B))
    assert h.snapshot() == before


# ==================================================================== outputs in the graph's bucket


def exported(
    h: KnowledgeGraphHarness, contents: dict[str, bytes], *, put: bool = True
) -> RunProvenance:
    """A run whose outputs the Lustre HSM exported to the graph's own bucket (``contents``
    put there unless ``put`` is false)."""
    header = make_header(PROJECT_A)
    files = []
    for path, data in contents.items():
        key = f"runs/{header.run_id}/{path}"
        if put:
            h.put_object(key, data)
        files.append(SyncedFile(path, len(data), f"s3://{GRAPH_BUCKET}/{key}"))
    return dataclasses.replace(
        provenance(), header=header, outcome=SyncOutcome("lustre-hsm", tuple(files))
    )


CONTENTS = {"spikes.dat": b"spike" * 20, "reports/soma.h5": b"\x89HDF" * 9}


def test_outputs_in_the_graph_bucket_become_its_files_linked_to_the_objects(
    knowledge_graph_harness: KnowledgeGraphHarness,
) -> None:
    h = knowledge_graph_harness
    prov = exported(h, CONTENTS)
    reg = h.graph.register(prov)
    assert len(reg.entity_ids) == len(CONTENTS)
    for path, data in CONTENTS.items():
        assert h.linked(prov.header, path) == (f"runs/{prov.header.run_id}/{path}", len(data))
    creations = h.creations()
    h.graph.register(prov)
    assert h.creations() == creations
    for path, data in CONTENTS.items():
        assert h.linked(prov.header, path) == (f"runs/{prov.header.run_id}/{path}", len(data))


def test_outputs_elsewhere_are_recorded_by_location_without_a_file(
    knowledge_graph_harness: KnowledgeGraphHarness,
) -> None:
    h = knowledge_graph_harness
    prov = provenance()  # in another bucket than the graph's
    h.graph.register(prov)
    for path in OUTPUTS:
        assert h.linked(prov.header, path) is None


def test_objects_missing_from_the_bucket_fail_the_registration_naming_each_output(
    knowledge_graph_harness: KnowledgeGraphHarness,
) -> None:
    h = knowledge_graph_harness
    prov = exported(h, {**CONTENTS, "a.dat": b"a", "b.dat": b"b"}, put=False)
    h.put_object(f"runs/{prov.header.run_id}/spikes.dat", CONTENTS["spikes.dat"])
    h.put_object(f"runs/{prov.header.run_id}/reports/soma.h5", CONTENTS["reports/soma.h5"])
    with pytest.raises(SyncIncomplete) as caught:
        h.graph.register(prov)
    assert caught.value.offending == ("a.dat", "b.dat")
    assert "a.dat" in caught.value.message
    assert "b.dat" in caught.value.message
    # The activity (the commit marker) is not written while an output is missing.
    assert not [i for i in h.snapshot() if i.endswith(f"/runs/{prov.header.run_id}")]
    h.put_object(f"runs/{prov.header.run_id}/a.dat", b"a")
    h.put_object(f"runs/{prov.header.run_id}/b.dat", b"b")
    reg = h.graph.register(prov)
    assert h.revision(reg.activity_id) is not None
    assert h.linked(prov.header, "b.dat") == (f"runs/{prov.header.run_id}/b.dat", 1)


def test_an_object_of_another_size_than_synchronised_fails_the_registration(
    knowledge_graph_harness: KnowledgeGraphHarness,
) -> None:
    h = knowledge_graph_harness
    prov = exported(h, CONTENTS)
    h.put_object(f"runs/{prov.header.run_id}/spikes.dat", b"short")
    with pytest.raises(SyncIncomplete) as caught:
        h.graph.register(prov)
    assert caught.value.offending == ("spikes.dat",)
    assert "5 bytes" in caught.value.message
    assert "100 bytes" in caught.value.message


def test_withdraw_also_withdraws_the_linked_files(
    knowledge_graph_harness: KnowledgeGraphHarness,
) -> None:
    h = knowledge_graph_harness
    prov = exported(h, CONTENTS)
    h.graph.register(prov)
    h.graph.withdraw(prov.header)
    for path in CONTENTS:
        assert h.linked(prov.header, path) is None


# ==================================================================== reading back


def test_read_gives_back_the_activity_and_its_entities_at_their_latest_revision(
    knowledge_graph_harness: KnowledgeGraphHarness,
) -> None:
    h = knowledge_graph_harness
    prov = provenance()
    assert h.graph.read(prov.header) is None
    reg = h.graph.register(prov)
    first = h.graph.read(prov.header)
    assert first is not None
    assert first.activity_id == reg.activity_id
    assert first.activity["@id"] == reg.activity_id
    assert sorted(e["@id"] for e in first.entities) == sorted(reg.entity_ids)
    assert not first.withdrawn
    assert first.revision >= 1
    h.graph.withdraw(prov.header)
    withdrawn = h.graph.read(prov.header)
    assert withdrawn is not None
    assert withdrawn.withdrawn


def test_read_is_confined_to_its_run(knowledge_graph_harness: KnowledgeGraphHarness) -> None:
    h = knowledge_graph_harness
    h.graph.register(provenance(PROJECT_A))
    other = provenance(PROJECT_B)
    assert h.graph.read(other.header) is None
