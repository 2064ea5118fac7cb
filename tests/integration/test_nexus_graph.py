"""The Nexus adapter against the Nexus Delta test server, over real HTTP, under faults.

The server (``tests/nexus_server.py``) answers as Delta >= 1.9 does unless a test says otherwise
(an update that changes nothing keeps its revision). Faults are the server's: 5xx, 429 with
``Retry-After``, replies slower than the client's timeout, and replies lost after the write.
The adapter's sleeps are recorded, not slept, except where a test needs real time (timeouts).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obp_workflow.adapters.fake.knowledge_graph import activity_id, entity_id
from obp_workflow.adapters.nexus.client import NexusRefusal, NexusSettings
from obp_workflow.adapters.nexus.graph import NexusKnowledgeGraph
from obp_workflow.core.errors import ServiceUnavailable, SyncIncomplete
from obp_workflow.core.jobs import parse_accounting_line
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import SyncedFile, SyncOutcome
from obp_workflow.ports.knowledge_graph import KnowledgeGraph, RunProvenance
from tests.contract.harness import PROJECT_A, PROJECT_B, T0, make_header, make_request
from tests.contract.harness_nexus import PUBLIC_BASE, nexus_settings
from tests.moto_server import MotoServer
from tests.nexus_server import SERVICE_USER, TOKEN, NexusServer

PROV = "http://www.w3.org/ns/prov#"
NSG = "https://neuroshapes.org/"
SCHEMA = "http://schema.org/"
BUCKET = "nexus-data-bucket"
S3_STORAGE = "nexus-s3"
OUTPUTS = ("spikes.dat", "reports/soma.h5", "reports/deep/v.bin")


# ==================================================================== fixtures and helpers


@pytest.fixture(scope="module")
def server() -> Iterator[NexusServer]:
    """One server for the module (hypothesis examples share it); each test resets it."""
    srv = NexusServer(base_uri=PUBLIC_BASE).start()
    for project in (PROJECT_A, PROJECT_B):
        srv.create_project(*nexus_settings(srv).project_for(project))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def nexus(server: NexusServer) -> NexusServer:
    server.reset()
    return server


@dataclass
class Graph:
    graph: NexusKnowledgeGraph
    sleeps: list[float]


def graph_for(server: NexusServer, token: str = TOKEN, **overrides: Any) -> Graph:
    sleeps: list[float] = []
    values: dict[str, Any] = {"max_retry_after_seconds": 60.0, "concurrency": 1}
    values.update(overrides)
    graph = NexusKnowledgeGraph(
        nexus_settings(server, **values), lambda: token, sleep=sleeps.append
    )
    return Graph(graph, sleeps)


def provenance(
    header: RunHeader | None = None,
    outputs: tuple[str, ...] = OUTPUTS,
    location: Callable[[RunHeader, str], str] | None = None,
) -> RunProvenance:
    header = header or make_header(PROJECT_A, request=make_request(outputs=outputs))

    def s3(h: RunHeader, path: str) -> str:
        return f"s3://{BUCKET}/runs/{h.run_id}/{path}"

    where = location or s3
    files = tuple(
        SyncedFile(path, 100 + i, where(header, path), f"sha256:{i:064x}")
        for i, path in enumerate(outputs)
    )
    return RunProvenance(
        header=header,
        cluster_name="pcluster-aaaaaaaa",
        job_id="4242",
        started_at=T0 + timedelta(minutes=1),
        ended_at=T0 + timedelta(hours=2, seconds=30),
        outcome=SyncOutcome("lustre-hsm", files),
        exit_code=0,
    )


def all_ids(prov: RunProvenance, graph: NexusKnowledgeGraph) -> set[str]:
    h = prov.header
    return {graph.activity_id(h.project, h.run_id)} | {
        graph.entity_id(h.project, h.run_id, f.relative_path) for f in prov.outcome.files
    }


def clean_graph(server: NexusServer, prov: RunProvenance) -> dict[str, Any]:
    """The graph a fault-free registration of ``prov`` leaves (the server is reset after)."""
    server.reset()
    g = graph_for(server)
    g.graph.register(prov)
    found = server.sources()
    g.graph.close()
    server.reset()
    return found


def until_done(action: Callable[[], Any], tries: int = 8) -> Any:
    """What the application does: try again (later) while the graph is unavailable."""
    for _ in range(tries - 1):
        try:
            return action()
        except ServiceUnavailable:
            continue
    return action()


def answered(server: NexusServer, status: int | None, method: str | None = None) -> int:
    return sum(
        1 for r in server.requests if r.status == status and (method is None or r.method == method)
    )


# ==================================================================== the provenance


def test_the_activity_and_its_entities_are_json_ld_with_prov_links(nexus: NexusServer) -> None:
    request = make_request(
        command=["neurodamus", "--config", "simulation_config.json"],
        outputs=OUTPUTS,
        name="thalamus sweep 3",
    ).model_copy(
        update={
            "inputs": ["https://kg.example.org/circuits/c1", "/sbo/data/project/c1/config.json"],
            "metadata": {"campaign": "sweep", "seed": 3},
        }
    )
    header = make_header(PROJECT_A, request=request)

    def located(h: RunHeader, path: str) -> str:  # one output uploaded, the others in S3
        if path == "spikes.dat":
            return f"https://openbrainplatform.org/workflow/x/runs/{h.run_id}/outputs/{path}/file"
        return f"s3://{BUCKET}/runs/{h.run_id}/{path}"

    record = parse_accounting_line(
        "4242|COMPLETED|0:0|2|node-[01-02]|7105|2026-03-01T12:01:40|2026-03-01T13:59:25|"
        "obp-run|2026-03-01T12:01:02"
    )
    prov = dataclasses.replace(provenance(header, location=located), accounting=record)
    g = graph_for(nexus)
    reg = g.graph.register(prov)

    act = nexus.source(reg.activity_id)
    assert act is not None
    context = act["@context"]
    assert context["prov"] == PROV
    assert context["nsg"] == NSG
    assert context["generated"] == {"@id": "prov:generated", "@type": "@id"}
    assert act["@id"] == reg.activity_id
    entry = nexus.entry(reg.activity_id)
    assert entry is not None
    assert set(entry.types) == {f"{PROV}Activity", f"{NSG}WorkflowExecution"}
    assert act["status"] == "Done"
    assert act["startedAtTime"] == "2026-03-01T12:01:00Z"
    assert act["endedAtTime"] == "2026-03-01T14:00:30Z"
    assert act["elapsed"] == "PT7170S"
    assert (act["clusterName"], act["jobId"], act["exitCode"]) == ("pcluster-aaaaaaaa", "4242", 0)
    assert act["generated"] == list(reg.entity_ids)
    assert act["slurmAccounting"] == {
        "@type": "SlurmAccounting",
        "jobId": "4242",
        "state": "COMPLETED",
        "nodes": 2,
        "nodeList": "node-[01-02]",
        "exitCode": 0,
        "signal": 0,
        "elapsed": "PT7105S",
        "start": "2026-03-01T12:01:40",
        "end": "2026-03-01T13:59:25",
    }
    assert context["nodes"] == {"@id": "obp:nodes", "@type": "xsd:integer"}
    assert act["wasAssociatedWith"]["@id"] == "https://openbrainplatform.org/workflow/service"
    assert "SoftwareAgent" in act["wasAssociatedWith"]["@type"]
    user = f"{PUBLIC_BASE}/realms/SBO/users/alice"
    assert act["wasAttributedTo"]["@id"] == user
    configuration, kg_input, cluster_input = act["used"]
    assert configuration["@id"] == reg.activity_id + "/configuration"
    assert configuration["command"] == ["neurodamus", "--config", "simulation_config.json"]
    assert context["command"]["@container"] == "@list"  # argument order is kept
    assert configuration["requestDigest"]["value"] == request.digest()
    assert json.loads(configuration["metadata"]) == {"campaign": "sweep", "seed": 3}
    assert kg_input == {"@id": "https://kg.example.org/circuits/c1"}
    assert cluster_input["clusterPath"] == "/sbo/data/project/c1/config.json"

    org, project = g.graph.project_for(PROJECT_A)
    for ident, file in zip(reg.entity_ids, prov.outcome.files, strict=True):
        entity = nexus.source(ident)
        assert entity is not None
        found = nexus.entry(ident)
        assert found is not None
        assert set(found.types) == {f"{PROV}Entity", f"{SCHEMA}Dataset"}
        assert entity["wasGeneratedBy"] == reg.activity_id
        assert entity["wasAttributedTo"] == user
        download = entity["distribution"]
        assert download["@type"] == "DataDownload"
        assert download["contentSize"] == {"unitCode": "bytes", "value": file.size}
        assert download["digest"] == {
            "algorithm": "SHA-256",
            "value": file.digest.split(":")[1] if file.digest else None,
        }
        if file.location.startswith("s3://"):
            assert download["contentUrl"] == file.location
        else:  # a Nexus file: its address, as Delta writes ``_self``
            address = download["contentUrl"]
            assert address.startswith(f"{PUBLIC_BASE}/files/{org}/{project}/")
            assert unquote(address.rsplit("/", 1)[1]) == file.location
        media = "application/x-hdf5" if file.relative_path.endswith(".h5") else None
        assert download["encodingFormat"] == (media or "application/octet-stream")


def test_ids_are_derived_from_the_run_as_the_fake_derives_them(nexus: NexusServer) -> None:
    prov = provenance()
    reg = graph_for(nexus).graph.register(prov)
    h = prov.header
    assert reg.activity_id == activity_id(h.project, h.run_id)
    assert list(reg.entity_ids) == [entity_id(h.project, h.run_id, p) for p in OUTPUTS]


def test_an_update_that_changes_nothing_keeps_its_revision_on_delta_1_9_and_later(
    nexus: NexusServer,
) -> None:
    prov = provenance()
    g = graph_for(nexus)
    first = g.graph.register(prov)
    before = {i: nexus.revision(i) for i in (first.activity_id, *first.entity_ids)}
    content = nexus.sources()
    again = g.graph.register(prov)
    assert again == first
    assert nexus.creations == 1 + len(OUTPUTS)
    assert {i: nexus.revision(i) for i in before} == before  # Delta wrote nothing
    assert nexus.sources() == content
    assert answered(nexus, 200, "PUT") == 1 + len(OUTPUTS)  # each update was accepted


# ==================================================================== faults


def test_5xx_are_retried_and_leave_the_fault_free_graph(nexus: NexusServer) -> None:
    prov = provenance()
    expected = clean_graph(nexus, prov)
    nexus.fail_next(2, status=503)
    nexus.pass_next()
    nexus.fail_next(1, status=500)
    g = graph_for(nexus)
    g.graph.register(prov)
    assert nexus.sources() == expected
    assert nexus.creations == len(expected)
    assert answered(nexus, 503) == 2
    assert answered(nexus, 500) == 1
    assert len(g.sleeps) == 3


def test_429_honours_retry_after(nexus: NexusServer) -> None:
    prov = provenance()
    nexus.throttle_next(1, retry_after="7")
    nexus.throttle_next(1, retry_after=None)  # no Retry-After: exponential backoff
    g = graph_for(nexus)
    g.graph.register(prov)
    assert g.sleeps[0] == 7.0
    assert 0 < g.sleeps[1] < 1
    assert nexus.creations == 1 + len(OUTPUTS)


def test_retry_after_is_capped(nexus: NexusServer) -> None:
    nexus.throttle_next(1, retry_after="86400")
    g = graph_for(nexus, max_retry_after_seconds=30.0)
    g.graph.register(provenance())
    assert g.sleeps == [30.0]


def test_a_reply_slower_than_the_timeout_is_retried_without_duplicates(
    nexus: NexusServer,
) -> None:
    prov = provenance()
    expected = clean_graph(nexus, prov)
    nexus.slow_next(2, delay=0.6)  # the first two requests: the client gives up at 0.2 s
    g = graph_for(nexus, read_timeout=0.2)
    g.graph.register(prov)
    nexus.wait_idle()  # the slow requests finish too (their writes come late)
    assert nexus.sources() == expected
    assert nexus.creations == len(expected)


def test_a_reply_lost_after_the_write_is_harmless(nexus: NexusServer) -> None:
    prov = provenance()
    expected = clean_graph(nexus, prov)
    nexus.lose_reply_next(2)  # the write happens, the reply never comes (then a 409, lost too)
    g = graph_for(nexus)
    g.graph.register(prov)
    assert nexus.sources() == expected
    assert nexus.creations == len(expected)
    assert answered(nexus, None) == 2
    assert answered(nexus, 409) >= 1  # the retry found what the lost write had created


def test_after_the_retry_budget_the_error_names_status_and_type(nexus: NexusServer) -> None:
    nexus.fail_next(10, status=500)
    g = graph_for(nexus, max_attempts=3)
    with pytest.raises(ServiceUnavailable) as caught:
        g.graph.register(provenance())
    message = caught.value.message
    assert "after 3 attempts" in message
    assert "500 UnexpectedError" in message
    assert TOKEN not in message
    assert len(nexus.requests) == 3


def test_a_concurrent_writer_costs_a_reread_not_the_registration(nexus: NexusServer) -> None:
    prov = provenance(outputs=("out.h5",))
    g = graph_for(nexus)
    h = prov.header
    ent = g.graph.entity_id(h.project, h.run_id, "out.h5")
    org, project = g.graph.project_for(h.project)
    nexus.write_behind(org, project, ent, {"@id": ent, "note": "someone else's"})
    nexus.interfere_next(
        lambda: nexus.write_behind(org, project, ent, {"@id": ent, "note": "and again"}),
        match=lambda method, path: method == "PUT" and "outputs" in unquote(path),
        times=2,  # the create (409 exists) and the first update (409 IncorrectRev)
    )
    g.graph.register(prov)
    source = nexus.source(ent)
    assert source is not None
    assert source["wasGeneratedBy"] == g.graph.activity_id(h.project, h.run_id)
    assert [
        r.status for r in nexus.requests if r.method == "PUT" and "outputs" in unquote(r.path)
    ] == [
        409,
        409,
        200,
    ]


def test_a_resource_that_keeps_changing_is_given_up_after_a_bound(nexus: NexusServer) -> None:
    prov = provenance(outputs=("out.h5",))
    g = graph_for(nexus, max_conflicts=2)
    h = prov.header
    ent = g.graph.entity_id(h.project, h.run_id, "out.h5")
    org, project = g.graph.project_for(h.project)
    nexus.write_behind(org, project, ent, {"@id": ent, "n": 0})
    count = iter(range(1, 100))
    nexus.interfere_next(
        lambda: nexus.write_behind(org, project, ent, {"@id": ent, "n": next(count)}),
        match=lambda method, path: method == "PUT",
        times=10,
    )
    with pytest.raises(ServiceUnavailable, match="kept changing"):
        g.graph.register(prov)


FAULTS = st.sampled_from(["pass", "5xx", "429", "slow", "lost"])


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(register_faults=st.lists(FAULTS, max_size=8), withdraw_faults=st.lists(FAULTS, max_size=6))
def test_under_any_faults_no_duplicate_and_the_fault_free_graph(
    server: NexusServer, register_faults: list[str], withdraw_faults: list[str]
) -> None:
    prov = provenance(make_header(PROJECT_A, "run-faults", request=make_request(outputs=OUTPUTS)))
    expected = clean_graph(server, prov)
    g = graph_for(server, read_timeout=0.2)
    ids = all_ids(prov, g.graph)

    def inject(faults: list[str]) -> None:
        for fault in faults:
            if fault == "pass":
                server.pass_next()
            elif fault == "5xx":
                server.fail_next(status=503)
            elif fault == "429":
                server.throttle_next(retry_after="2")
            elif fault == "slow":
                server.slow_next(delay=0.4)
            else:
                server.lose_reply_next()

    inject(register_faults)
    reg = until_done(lambda: g.graph.register(prov))
    server.wait_idle()
    server.clear_faults()
    assert {reg.activity_id, *reg.entity_ids} == ids
    assert server.sources() == expected
    assert server.creations == len(ids)  # every id created once, nothing else

    inject(withdraw_faults)
    until_done(lambda: g.graph.withdraw(prov.header))
    server.wait_idle()
    server.clear_faults()
    assert all(server.deprecated(i) for i in ids)
    assert server.sources() == expected
    assert server.creations == len(ids)
    assert all(s == 2.0 or s < 1 for s in g.sleeps)  # Retry-After, or a short backoff
    g.graph.close()


def test_parallel_writes_under_faults_leave_the_fault_free_graph(nexus: NexusServer) -> None:
    outputs = tuple(f"out/{i:02d}.h5" for i in range(24))
    prov = provenance(outputs=outputs)
    expected = clean_graph(nexus, prov)
    for _ in range(4):
        nexus.fail_next(status=502)
        nexus.lose_reply_next()
        nexus.pass_next(2)
    g = graph_for(nexus, concurrency=6)
    until_done(lambda: g.graph.register(prov))
    nexus.wait_idle()
    assert nexus.sources() == expected
    assert nexus.creations == len(expected) == 1 + len(outputs)


def test_withdraw_survives_lost_replies_and_is_idempotent(nexus: NexusServer) -> None:
    prov = provenance()
    g = graph_for(nexus)
    reg = g.graph.register(prov)
    # The first deprecation is done twice over (its retry gets IncorrectRev), both replies lost.
    nexus.lose_reply_next(2, match=lambda method, _path: method == "DELETE")
    g.graph.withdraw(prov.header)
    for ident in (reg.activity_id, *reg.entity_ids):
        assert nexus.deprecated(ident)
    nexus.requests.clear()
    g.graph.withdraw(prov.header)
    assert {r.method for r in nexus.requests} == {"GET"}  # nothing left to deprecate


def test_withdraw_reads_a_compacted_generated_and_deprecates_the_run_files(
    nexus: NexusServer,
) -> None:
    header = make_header(PROJECT_A)  # its request announced no outputs
    g = graph_for(nexus)
    org, project = g.graph.project_for(header.project)
    act = g.graph.activity_id(header.project, header.run_id)
    ent = g.graph.entity_id(header.project, header.run_id, "only.h5")
    nexus.write_behind(org, project, ent, {"@id": ent})
    # Delta compacts a one-element list to its element.
    nexus.write_behind(org, project, act, {"@id": act, "generated": ent})
    g.graph.upload_file(header, "only.h5", io.BytesIO(b"data"), 4)
    g.graph.withdraw(header)
    assert nexus.deprecated(act)
    assert nexus.deprecated(ent)
    assert nexus.deprecated(g.graph.file_id(header.project, header.run_id, "only.h5"))


# ==================================================================== the token


def test_the_token_never_reaches_an_error_or_a_log_record(
    nexus: NexusServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "eyJhbGciOiJSUzI1NiJ9.very-secret-service-token.c2lnbmF0dXJl"
    nexus.tokens[secret] = SERVICE_USER
    try:
        g = graph_for(nexus, token=secret, read_timeout=0.2)
        nexus.fail_next(2, status=503)
        nexus.pass_next()
        nexus.throttle_next(1, retry_after="1")
        nexus.pass_next()
        nexus.lose_reply_next(1)
        nexus.pass_next()
        nexus.slow_next(1, delay=0.4)
        prov = provenance()
        g.graph.register(prov)
        g.graph.upload_file(prov.header, "spikes.dat", io.BytesIO(b"x" * 10), 10)
        errors: list[BaseException] = []
        nexus.fail_next(20, status=500)
        with pytest.raises(ServiceUnavailable) as budget:
            g.graph.register(prov)
        errors.append(budget.value)
        nexus.clear_faults()
        del nexus.tokens[secret]  # now Delta refuses it
        with pytest.raises(NexusRefusal) as refused:
            g.graph.register(prov)
        errors.append(refused.value)
        assert refused.value.status == 401
        assert "AuthenticationFailed" in refused.value.message
        nexus.wait_idle()
    finally:
        nexus.tokens.pop(secret, None)
    assert any("retrying" in r.getMessage() for r in caplog.records), "no retry was logged"
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in (record.exc_text or "")
    for error in errors:
        assert secret not in str(error)
        assert secret not in repr(error.args)
        assert error.__cause__ is None
    assert all("authorization" not in r.headers for r in nexus.requests)


def test_a_refused_token_is_not_retried(nexus: NexusServer) -> None:
    g = graph_for(nexus, token="not-a-token-nexus-knows")
    with pytest.raises(NexusRefusal, match="refused the service's credentials"):
        g.graph.register(provenance())
    assert len(nexus.requests) == 1


def test_a_failing_token_provider_is_named_by_its_error_type_only(nexus: NexusServer) -> None:
    def provider() -> str:
        raise RuntimeError("vault said: secret=abc123")

    graph = NexusKnowledgeGraph(nexus_settings(nexus), provider)
    with pytest.raises(ServiceUnavailable) as caught:
        graph.register(provenance())
    assert "RuntimeError" in caught.value.message
    assert "abc123" not in caught.value.message


# ==================================================================== projects


def test_each_virtual_lab_project_maps_to_its_own_nexus_project(nexus: NexusServer) -> None:
    g = graph_for(nexus, org_template="vlab-{virtual_lab_id}", project_template="p-{project_id}")
    org, project = g.graph.project_for(PROJECT_B)
    assert (org, project) == (
        f"vlab-{PROJECT_B.virtual_lab_id}",
        f"p-{PROJECT_B.project_id}",
    )
    with pytest.raises(NexusRefusal, match="ProjectNotFound"):
        g.graph.register(provenance(make_header(PROJECT_B)))
    nexus.create_project(org, project)
    reg = g.graph.register(provenance(make_header(PROJECT_B)))
    entry = nexus.entry(reg.activity_id)
    assert entry is not None
    assert (entry.org, entry.project) == (org, project)


@pytest.mark.parametrize(
    "template", ["{virtual_lab_id}/{project_id}", "{nope}", "x" * 65, "{virtual_lab_id}.x"]
)
def test_a_template_that_gives_no_nexus_label_is_refused_at_once(template: str) -> None:
    with pytest.raises(ValueError, match=r"template|label"):
        NexusSettings("https://nexus.example.org/v1", org_template=template)


def test_the_endpoint_is_delta_s_api_root() -> None:
    with pytest.raises(ValueError, match="/v1"):
        NexusSettings("https://nexus.example.org/api/nexus")


# ==================================================================== uploads


def upload_requests(server: NexusServer) -> list[Any]:
    return [r for r in server.requests if r.method == "PUT" and "/files/" in r.path]


def test_an_upload_is_streamed_multipart_with_the_nexus_headers(nexus: NexusServer) -> None:
    header = make_header(PROJECT_A)
    data = bytes(range(256)) * 1000 + b"\r\n--not-a-boundary\r\n"
    g = graph_for(nexus)
    stored = g.graph.upload_file(header, "reports/soma.h5", io.BytesIO(data), len(data))
    assert stored.id == g.graph.file_id(header.project, header.run_id, "reports/soma.h5")
    assert stored.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (stored.size, stored.rev, stored.filename) == (len(data), 1, "soma.h5")
    assert stored.media_type == "application/x-hdf5"
    assert nexus.file_content(stored.id) == data
    (put,) = upload_requests(nexus)
    assert put.headers["x-nxs-file-content-length"] == str(len(data))
    assert put.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert "transfer-encoding" not in put.headers  # a known length, not chunked
    metadata = json.loads(put.headers["x-nxs-file-metadata"])
    assert metadata["name"] == "soma.h5"
    assert metadata["keywords"]["runId"] == header.run_id
    assert stored.synced("reports/soma.h5") == SyncedFile(
        "reports/soma.h5", len(data), stored.id, stored.digest
    )


def test_the_same_content_uploaded_again_is_not_sent_again(nexus: NexusServer) -> None:
    header = make_header(PROJECT_A)
    g = graph_for(nexus)
    first = g.graph.upload_file(header, "a.bin", io.BytesIO(b"payload"), 7)
    again = g.graph.upload_file(header, "a.bin", io.BytesIO(b"payload"), 7)
    assert again == first
    assert len(upload_requests(nexus)) == 1
    assert nexus.file_creations == 1


def test_a_known_digest_spares_reading_the_stream(nexus: NexusServer) -> None:
    header = make_header(PROJECT_A)
    g = graph_for(nexus)
    first = g.graph.upload_file(header, "a.bin", io.BytesIO(b"payload"), 7)

    class Unreadable(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise AssertionError("the content was read")

    again = g.graph.upload_file(header, "a.bin", Unreadable(), 7, digest=first.digest)
    assert again == first


def test_a_lost_upload_reply_then_the_retry_makes_one_file(nexus: NexusServer) -> None:
    header = make_header(PROJECT_A)
    data = b"spikes" * 5000
    nexus.lose_reply_next(1, match=lambda method, path: method == "PUT")
    g = graph_for(nexus)
    chunks = iter([data[:10000], data[10000:]])  # not seekable: spooled, then sent twice
    stored = g.graph.upload_file(header, "spikes.dat", chunks, len(data))
    assert nexus.file_creations == 1
    assert stored.rev == 1
    assert stored.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert [r.status for r in upload_requests(nexus)] == [None, 409]


def test_other_content_updates_the_file(nexus: NexusServer) -> None:
    header = make_header(PROJECT_A)
    g = graph_for(nexus)
    g.graph.upload_file(header, "a.bin", io.BytesIO(b"first"), 5)
    second = g.graph.upload_file(header, "a.bin", io.BytesIO(b"second"), 6)
    assert second.rev == 2
    assert nexus.file_content(second.id) == b"second"
    assert nexus.file_creations == 1


@pytest.mark.parametrize("content", [b"short", b"far too long"])
def test_a_stream_of_another_size_uploads_nothing(nexus: NexusServer, content: bytes) -> None:
    header = make_header(PROJECT_A)
    g = graph_for(nexus)
    with pytest.raises(SyncIncomplete) as caught:
        g.graph.upload_file(header, "a.bin", io.BytesIO(content), 8)
    assert caught.value.offending == ("a.bin",)
    with pytest.raises(SyncIncomplete):
        g.graph.upload_file(header, "b.bin", iter([content]), 8)
    nexus.wait_idle()
    assert nexus.files() == {}


# ==================================================================== S3: uploads and links


@pytest.fixture
def s3_nexus(moto: MotoServer) -> Iterator[tuple[NexusServer, Any]]:
    s3 = boto3.client("s3", endpoint_url=moto.endpoint, config=MotoServer.client_config())
    s3.create_bucket(Bucket=BUCKET)
    srv = NexusServer(base_uri=PUBLIC_BASE, s3=s3, s3_storages={S3_STORAGE: BUCKET}).start()
    for project in (PROJECT_A, PROJECT_B):
        srv.create_project(*nexus_settings(srv).project_for(project))
    try:
        yield srv, s3
    finally:
        srv.stop()


def test_an_upload_to_an_s3_storage(s3_nexus: tuple[NexusServer, Any]) -> None:
    srv, s3 = s3_nexus
    header = make_header(PROJECT_A)
    g = graph_for(srv, upload_storage=S3_STORAGE)
    stored = g.graph.upload_file(header, "v.bin", io.BytesIO(b"voltage"), 7)
    assert s3.get_object(Bucket=BUCKET, Key=stored.location)["Body"].read() == b"voltage"
    state = srv.files()[stored.id]
    assert state.storage_type == "S3Storage"


@pytest.mark.parametrize("mode", ["link", "legacy-files"])
def test_an_object_in_the_nexus_bucket_is_linked_once(
    s3_nexus: tuple[NexusServer, Any], mode: str
) -> None:
    srv, s3 = s3_nexus
    header = make_header(PROJECT_A)
    key = f"nexus/{header.run_id}/reports/soma.h5"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"soma voltage")
    g = graph_for(srv, link_mode=mode, s3_storage=S3_STORAGE)
    linked = g.graph.link_file(header, "reports/soma.h5", key, size=12)
    assert linked.size == 12
    assert linked.digest == "sha256:" + hashlib.sha256(b"soma voltage").hexdigest()
    assert linked.location.endswith(key)
    (put,) = [r for r in srv.requests if r.method == "PUT"]
    assert put.query["storage"] == [S3_STORAGE]
    if mode == "link":
        assert put.path.startswith("/v1/link/files/")
        assert put.json["path"] == key
        assert put.json["metadata"]["keywords"]["relativePath"] == "reports/soma.h5"
        assert srv.files()[linked.id].origin == "Link"
    else:
        assert put.path.startswith("/v1/files/")
        assert put.json == {"path": key, "filename": "soma.h5", "mediaType": "application/x-hdf5"}
        assert srv.files()[linked.id].origin == "Storage"
    again = g.graph.link_file(header, "reports/soma.h5", key, size=12)
    assert again == linked
    assert srv.file_creations == 1
    assert [r.method for r in srv.requests].count("PUT") == 1


def test_an_object_that_changed_is_linked_again(s3_nexus: tuple[NexusServer, Any]) -> None:
    srv, s3 = s3_nexus
    header = make_header(PROJECT_A)
    key = f"runs/{header.run_id}/out.h5"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"v1")
    g = graph_for(srv, s3_storage=S3_STORAGE)
    g.graph.link_file(header, "out.h5", key, size=2)
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"v2 longer")
    relinked = g.graph.link_file(header, "out.h5", key, size=9)
    assert (relinked.rev, relinked.size) == (2, 9)


def test_a_lost_link_reply_then_the_retry_makes_one_file(s3_nexus: tuple[NexusServer, Any]) -> None:
    srv, s3 = s3_nexus
    header = make_header(PROJECT_A)
    key = f"runs/{header.run_id}/out.h5"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"data")
    srv.lose_reply_next(1, match=lambda method, _path: method == "PUT")
    g = graph_for(srv, s3_storage=S3_STORAGE)
    linked = g.graph.link_file(header, "out.h5", key)
    assert (linked.rev, srv.file_creations) == (1, 1)


def test_a_key_missing_from_the_bucket_is_an_incomplete_sync(
    s3_nexus: tuple[NexusServer, Any],
) -> None:
    srv, _ = s3_nexus
    header = make_header(PROJECT_A)
    g = graph_for(srv, s3_storage=S3_STORAGE)
    with pytest.raises(SyncIncomplete) as caught:
        g.graph.link_file(header, "out.h5", "runs/nowhere/out.h5")
    assert caught.value.offending == ("out.h5",)
    assert srv.files() == {}


def test_link_mode_on_a_delta_without_the_link_endpoint_says_what_to_set(
    moto: MotoServer,
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto.endpoint, config=MotoServer.client_config())
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="k/out.h5", Body=b"x")
    srv = NexusServer(s3=s3, s3_storages={S3_STORAGE: BUCKET}, link_endpoint=False).start()
    try:
        srv.create_project(*nexus_settings(srv).project_for(PROJECT_A))
        header = make_header(PROJECT_A)
        g = graph_for(srv, s3_storage=S3_STORAGE)
        with pytest.raises(NexusRefusal, match="legacy-files"):
            g.graph.link_file(header, "out.h5", "k/out.h5")
        legacy = graph_for(srv, s3_storage=S3_STORAGE, link_mode="legacy-files")
        assert legacy.graph.link_file(header, "out.h5", "k/out.h5").size == 1
    finally:
        srv.stop()


# ==================================================================== the server's fidelity


_HTTP = httpx.Client(timeout=5)


def delta(server: NexusServer, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """A request to the server as any Delta client sends it (with the service's token)."""
    headers = {"Authorization": f"Bearer {TOKEN}", **kwargs.pop("headers", {})}
    return _HTTP.request(method, server.endpoint + path, headers=headers, **kwargs)


#: Delta's own response bodies (``docs/external-contracts.md`` section 7): the
#: server's answers must carry exactly their fields.
EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "nexus"


def example(name: str) -> Any:
    """The body of ``tests/data/nexus/{name}``; a ``{{placeholder}}`` (a value Delta fills in)
    reads as 0, so that a template such as ``errors/incorrect-rev.json`` parses."""
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    return json.loads(re.sub(r"\{\{\w+\}\}", "0", text))


def fields(name: str) -> set[str]:
    """The top-level fields of an example body."""
    return set(example(name))


def test_the_server_answers_with_the_documented_bodies(nexus: NexusServer) -> None:
    org, project = nexus_settings(nexus).project_for(PROJECT_A)
    base = f"/resources/{org}/{project}/_/"
    ident = "https://example.org/things/1"
    path = base + ident.replace("/", "%2F").replace(":", "%3A")
    payload = {"@context": {"@vocab": "https://example.org/"}, "@id": ident, "@type": "Thing"}

    created = delta(nexus, "PUT", path, json=payload)
    assert created.status_code == 201
    assert set(created.json()) == fields("resources/created.json")
    assert created.json()["@type"] == "https://example.org/Thing"
    again = delta(nexus, "PUT", path, json=payload)
    assert (again.status_code, again.json()["@type"]) == (409, "ResourceAlreadyExists")
    assert set(again.json()) == fields("errors/already-exists.json")
    stale = delta(nexus, "PUT", path, params={"rev": 5}, json={**payload, "n": 1})
    assert stale.status_code == 409
    assert set(stale.json()) == fields("errors/incorrect-rev.json")
    assert {k: stale.json()[k] for k in ("@type", "provided", "expected")} == {
        "@type": "IncorrectRev",
        "provided": 5,
        "expected": 1,
    }
    updated = delta(nexus, "PUT", path, params={"rev": 1}, json={**payload, "n": 1})
    assert (updated.status_code, updated.json()["_rev"]) == (200, 2)
    assert set(updated.json()) == fields("resources/updated.json")
    fetched = delta(nexus, "GET", path).json()
    assert fetched["n"] == 1
    assert fetched["@context"][0].endswith("/contexts/metadata.json")
    assert delta(nexus, "GET", path, params={"rev": 1}).json().get("n") is None
    gone = delta(nexus, "DELETE", path, params={"rev": 2})
    assert (gone.status_code, gone.json()["_deprecated"], gone.json()["_rev"]) == (200, True, 3)
    assert set(gone.json()) == fields("resources/deprecated.json")
    twice = delta(nexus, "DELETE", path, params={"rev": 3})
    assert (twice.status_code, twice.json()["@type"]) == (400, "ResourceIsDeprecated")
    missing = delta(nexus, "GET", base + "nothing-here")
    assert (missing.status_code, missing.json()["@type"]) == (404, "ResourceNotFound")
    assert set(missing.json()) == fields("errors/not-found.json")
    no_token = _HTTP.get(nexus.endpoint + path)
    assert (no_token.status_code, no_token.json()["@type"]) == (401, "AuthenticationFailed")
    reserved = delta(nexus, "PUT", base + "x", json={"_rev": 1})
    assert reserved.status_code == 400
    remote = delta(nexus, "PUT", base + "y", json={"@context": "https://neuroshapes.org"})
    assert (remote.status_code, remote.json()["@type"]) == (400, "InvalidJsonLdFormat")

    upload = delta(
        nexus,
        "PUT",
        f"/files/{org}/{project}/myfile",
        files={"file": ("myfile.pdf", b"%PDF-1.4", "application/pdf")},
        headers={"x-nxs-file-metadata": json.dumps({"name": "My File"})},
    )
    assert upload.status_code == 201
    assert set(upload.json()) == fields("files/created-put.json")
    assert upload.json()["_digest"] == {
        "_algorithm": "SHA-256",
        "_value": hashlib.sha256(b"%PDF-1.4").hexdigest(),
    }
    content = delta(nexus, "GET", f"/files/{org}/{project}/myfile", headers={"Accept": "*/*"})
    assert content.content == b"%PDF-1.4"


def test_the_server_lists_by_type_with_pages(nexus: NexusServer) -> None:
    g = graph_for(nexus)
    for _ in range(3):
        g.graph.register(provenance(outputs=("a.h5",)))
    org, project = g.graph.project_for(PROJECT_A)
    page = delta(
        nexus,
        "GET",
        f"/resources/{org}/{project}",
        params={"type": f"{NSG}WorkflowExecution", "size": 2},
    ).json()
    assert page["_total"] == 3
    assert len(page["_results"]) == 2
    assert set(page) == fields("resources/listed.json")
    assert set(page["_results"][0]) == set(example("resources/listed.json")["_results"][0])
    rest = _HTTP.get(
        page["_next"].replace(PUBLIC_BASE, nexus.endpoint),
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()
    assert len(rest["_results"]) == 1
    assert "_next" not in rest
    everything = delta(nexus, "GET", f"/resources/{org}/{project}", params={"size": 50}).json()
    assert everything["_total"] == 6


def test_the_server_links_an_s3_object_with_the_documented_body(
    s3_nexus: tuple[NexusServer, Any],
) -> None:
    srv, s3 = s3_nexus
    org, project = nexus_settings(srv).project_for(PROJECT_A)
    key = "relative/path/to/myfile.png"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"\x89PNG")
    linked = delta(
        srv,
        "PUT",
        f"/link/files/{org}/{project}/myfile",
        params={"storage": S3_STORAGE},
        json={"path": key},
    )
    assert linked.status_code == 201
    assert set(linked.json()) == fields("files/link-result.json")
    assert (linked.json()["_origin"], linked.json()["_location"]) == ("Link", key)


def test_the_contract_graph_is_a_knowledge_graph(nexus: NexusServer) -> None:
    assert isinstance(graph_for(nexus).graph, KnowledgeGraph)
