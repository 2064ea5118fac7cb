"""Hostile input through the local gateway: values the API once let through, now refused by name.

Every request is real HTTP to the local gateway (authorizer, then API Lambda, in-memory adapters),
with a token of a member of the project, so that a refusal can only come from the rule under
test: without it the request would be answered 200 or 202.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from obp_workflow.adapters.fake.token_verifier import FakeTokenVerifier
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.entrypoints.composition.root import build
from obp_workflow.entrypoints.composition.settings import load_settings
from obp_workflow.entrypoints.http.models import PROBLEM_JSON, PROBLEM_TYPE_BASE
from obp_workflow.entrypoints.local.gateway import make_server

REQUEST: dict[str, Any] = {"name": "hostile", "command": ["neurodamus", "--tstop", "10"]}


@dataclass
class Api:
    client: httpx.Client
    verifier: FakeTokenVerifier

    def member_of(self, project: ProjectRef) -> dict[str, str]:
        """The headers of a new member of ``project``."""
        token = "t-" + uuid.uuid4().hex
        group = f"/proj/{project.virtual_lab_id}/{project.project_id}/member"
        self.verifier.issue(token, Principal("ada-" + token[-8:], "ada", parse_groups([group])))
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    verifier = FakeTokenVerifier()
    gateway = make_server("127.0.0.1", 0, build(load_settings(), token_verifier=verifier))
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            yield Api(client, verifier)
    finally:
        gateway.shutdown()
        gateway.server_close()


def new_project() -> ProjectRef:
    return ProjectRef.parse(str(uuid.uuid4()), str(uuid.uuid4()))


def project_url(vlab: str, project: str) -> str:
    return f"/v1/virtual-labs/{vlab}/projects/{project}"


def runs_url(project: ProjectRef) -> str:
    return project_url(project.virtual_lab_id, project.project_id) + "/runs"


def submit(api: Api, project: ProjectRef, who: dict[str, str]) -> str:
    response = api.client.post(runs_url(project), json=REQUEST, headers=who)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def refused_fields(response: httpx.Response) -> list[str]:
    """The fields a 422 invalid-request problem names."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM_TYPE_BASE + "invalid-request"
    assert body["status"] == 422
    return [e["field"] for e in body["errors"]]


# ================================================================ ids in the path: one spelling

#: Spellings of a UUID that Python's ``uuid.UUID`` reads as the same id.
OTHER_SPELLINGS: dict[str, Callable[[str], str]] = {
    "upper-case": str.upper,
    "braces": lambda u: "{" + u + "}",
    "urn": lambda u: "urn:uuid:" + u,
    "32-hex": lambda u: u.replace("-", ""),
}

#: Every operation with a Virtual Lab and a project in its path: (method, path after the
#: project, body).
OPERATIONS: dict[str, tuple[str, str, object]] = {
    "submitRun": ("POST", "/runs", REQUEST),
    "listRuns": ("GET", "/runs", None),
    "getRun": ("GET", "/runs/{run}", None),
    "cancelRun": ("POST", "/runs/{run}/cancel", {"reason": "hostile"}),
    "getRunLog": ("GET", "/runs/{run}/log", None),
    "getRunOutputs": ("GET", "/runs/{run}/outputs", None),
    "getRunProvenance": ("GET", "/runs/{run}/provenance", None),
    "getInstance": ("GET", "/instance", None),
}


@pytest.mark.parametrize("spelling", OTHER_SPELLINGS, ids=str)
@pytest.mark.parametrize("param", ["vlab", "project"])
@pytest.mark.parametrize("operation", OPERATIONS, ids=str)
def test_an_id_in_the_path_in_another_spelling_is_refused_by_name(
    api: Api, operation: str, param: str, spelling: str
) -> None:
    project = new_project()
    who = api.member_of(project)
    run_id = submit(api, project, who)
    method, rest, body = OPERATIONS[operation]
    ids = {"vlab": project.virtual_lab_id, "project": project.project_id}
    ids[param] = OTHER_SPELLINGS[spelling](ids[param])
    url = project_url(ids["vlab"], ids["project"]) + rest.format(run=run_id)

    response = api.client.request(method, url, json=body, headers=who)

    assert refused_fields(response) == [f"path.{param}"]
    runs = api.client.get(runs_url(project), headers=who).json()["runs"]
    assert [(r["run_id"], r["state"]) for r in runs] == [(run_id, "ACCEPTED")]  # nothing done


@pytest.mark.parametrize("operation", OPERATIONS, ids=str)
def test_the_canonical_spelling_reaches_the_project(api: Api, operation: str) -> None:
    project = new_project()
    who = api.member_of(project)
    run_id = submit(api, project, who)
    method, rest, body = OPERATIONS[operation]
    url = runs_url(project).removesuffix("/runs") + rest.format(run=run_id)

    response = api.client.request(method, url, json=body, headers=who)

    if operation == "getRunProvenance":  # the run was found; the graph holds nothing of it yet
        assert response.status_code == 404, response.text
        assert "nothing registered" in response.json()["detail"]
    else:
        assert response.status_code in (200, 202), response.text


def test_both_ids_in_another_spelling_are_both_named(api: Api) -> None:
    project = new_project()
    who = api.member_of(project)

    response = api.client.get(
        project_url(project.virtual_lab_id.upper(), "{" + project.project_id + "}") + "/runs",
        headers=who,
    )

    assert sorted(refused_fields(response)) == ["path.project", "path.vlab"]


def test_the_document_gives_the_canonical_pattern_for_every_id_in_a_path(api: Api) -> None:
    document = api.client.get("/v1/openapi.json").json()

    schemas = [
        parameter["schema"]
        for item in document["paths"].values()
        for op in item.values()
        for parameter in op.get("parameters", ())
        if parameter["in"] == "path" and parameter["name"] in ("vlab", "project")
    ]

    assert len(schemas) == 2 * len(OPERATIONS)
    for schema in schemas:
        assert schema["type"] == "string"
        assert schema["pattern"] == (
            "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
        )


# ================================================================ metadata: no control characters

#: NUL, C0 (tab, newline, escape, unit separator), DEL, C1 (next line, the last one) and the
#: Unicode line and paragraph separators.
CONTROLS = ["\x00", "\t", "\n", "\x1b", "\x1f", "\x7f", "\x85", "\x9f", "\u2028", "\u2029"]


def post_json(
    api: Api, project: ProjectRef, who: dict[str, str], body: object, *, ascii_only: bool
) -> httpx.Response:
    """POST ``body`` as JSON text: every non-ASCII character escaped as ``\\uXXXX``, or sent
    as its UTF-8 bytes."""
    content = json.dumps(body, ensure_ascii=ascii_only).encode()
    headers = {**who, "Content-Type": "application/json"}
    return api.client.post(runs_url(project), content=content, headers=headers)


def no_runs(api: Api, project: ProjectRef, who: dict[str, str]) -> bool:
    return api.client.get(runs_url(project), headers=who).json()["runs"] == []


@pytest.mark.parametrize("ascii_only", [True, False], ids=["escaped", "utf-8"])
@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_a_control_character_in_a_metadata_value_is_refused_by_its_key(
    api: Api, char: str, ascii_only: bool
) -> None:
    project = new_project()
    who = api.member_of(project)
    body = {**REQUEST, "metadata": {"campaign": f"ca1{char}baseline", "seed": 42}}

    response = post_json(api, project, who, body, ascii_only=ascii_only)

    assert refused_fields(response) == ["body.metadata.campaign"]
    assert no_runs(api, project, who)


@pytest.mark.parametrize("ascii_only", [True, False], ids=["escaped", "utf-8"])
@pytest.mark.parametrize("char", CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_a_control_character_in_a_metadata_key_is_refused_and_shown_escaped(
    api: Api, char: str, ascii_only: bool
) -> None:
    project = new_project()
    who = api.member_of(project)
    body = {**REQUEST, "metadata": {f"cam{char}paign": "ca1", "seed": 42}}

    response = post_json(api, project, who, body, ascii_only=ascii_only)

    assert refused_fields(response) == [f"body.metadata.cam\\u{ord(char):04x}paign"]
    assert char not in response.text
    assert no_runs(api, project, who)


def test_printable_metadata_is_kept_as_sent(api: Api) -> None:
    project = new_project()
    who = api.member_of(project)
    metadata = {"région": "Hippocampe CA1 — 10 s", "note": "µ\u00a0\u03b1 🧠", "seed": 42}

    response = post_json(api, project, who, {**REQUEST, "metadata": metadata}, ascii_only=False)

    assert response.status_code == 202, response.text
    assert response.json()["request"]["metadata"] == metadata


# ================================================================ integers in the body are strict

COUNTS = ["nodes", "tasks_per_node", "cpus_per_task", "memory_mb", "time_limit_minutes"]


@pytest.mark.parametrize("value", ["4", True, 4.0], ids=["string", "true", "4.0"])
@pytest.mark.parametrize("field", COUNTS)
def test_a_count_in_the_body_must_be_a_json_integer(api: Api, field: str, value: object) -> None:
    project = new_project()
    who = api.member_of(project)
    body = {**REQUEST, "resources": {field: value}}

    response = post_json(api, project, who, body, ascii_only=True)

    assert refused_fields(response) == [f"body.resources.{field}"]
    assert no_runs(api, project, who)


@pytest.mark.parametrize("field", COUNTS)
def test_a_json_integer_count_is_accepted(api: Api, field: str) -> None:
    project = new_project()
    who = api.member_of(project)

    response = post_json(api, project, who, {**REQUEST, "resources": {field: 4}}, ascii_only=True)

    assert response.status_code == 202, response.text
    assert response.json()["request"]["resources"][field] == 4


def test_every_count_is_an_integer_in_the_document(api: Api) -> None:
    schemas = api.client.get("/v1/openapi.json").json()["components"]["schemas"]
    properties = schemas["Resources"]["properties"]

    for field in COUNTS:
        types = {s.get("type") for s in properties[field].get("anyOf", [properties[field]])}
        assert types - {"null"} == {"integer"}, field


def test_integer_query_parameters_are_still_read_from_their_text(api: Api) -> None:
    """A query string is text: only the JSON body is strict."""
    project = new_project()
    who = api.member_of(project)
    run_id = submit(api, project, who)

    listing = api.client.get(runs_url(project) + "?limit=1", headers=who)
    log = api.client.get(f"{runs_url(project)}/{run_id}/log?max_bytes=5", headers=who)

    assert listing.status_code == 200, listing.text
    assert [r["run_id"] for r in listing.json()["runs"]] == [run_id]
    assert log.status_code == 200, log.text
    assert log.json()["max_bytes"] == 5
