"""The REST API over real HTTP: the local gateway, the authorizer, the API Lambda, the fakes.

Tokens come from ``FakeTokenVerifier``; every other adapter is in memory. Each test works in
projects of its own, so the module shares one gateway.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obp_workflow.adapters.fake.cluster_gateway import FakeClusterGateway
from obp_workflow.adapters.fake.token_verifier import FakeTokenVerifier
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups
from obp_workflow.core.run import SimulationRun
from obp_workflow.entrypoints.aws_lambda import api as lambda_api
from obp_workflow.entrypoints.aws_lambda import authorizer as lambda_authorizer
from obp_workflow.entrypoints.composition.root import Service, build
from obp_workflow.entrypoints.composition.settings import load_settings
from obp_workflow.entrypoints.http import api as http_api
from obp_workflow.entrypoints.http import authorization, routes
from obp_workflow.entrypoints.http.models import PROBLEM_JSON, PROBLEM_TYPE_BASE
from obp_workflow.entrypoints.http.openapi import openapi_document
from obp_workflow.entrypoints.local.gateway import LocalGateway, make_server
from tests.contract.harness_keycloak import KeycloakTokenVerifierHarness

REQUEST = {"name": "a small circuit", "command": ["neurodamus", "--tstop", "10"]}
WITH_OUTPUTS = {**REQUEST, "outputs": ["output/spikes.h5"]}


@dataclass
class World:
    gateway: LocalGateway
    client: httpx.Client
    issue: Callable[[Principal], str]
    container: Service
    cluster: FakeClusterGateway
    keycloak: KeycloakTokenVerifierHarness | None = None

    def login(self, principal: Principal) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.issue(principal)}"}

    def drive(
        self, project: ProjectRef, run_id: str, until: Callable[[SimulationRun], bool]
    ) -> None:
        """Sweep the pipeline (what the workflow instance does) until ``until(run)``."""
        runs, pipeline = self.container.run_repository(), self.container.pipeline()
        for _ in range(50):
            if until(runs.get(project, run_id)):
                return
            pipeline.sweep(project)
        raise AssertionError(f"run {run_id} never got there: {runs.get(project, run_id)}")


class StaticTokens:
    """Tokens known to an in-memory verifier."""

    def __init__(self) -> None:
        self.verifier = FakeTokenVerifier()

    def issue(self, principal: Principal) -> str:
        token = "t-" + uuid.uuid4().hex
        self.verifier.issue(token, principal)
        return token


@pytest.fixture(scope="module", params=["in-memory-tokens", "keycloak-issuer"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    """The API over real HTTP; tokens from an in-memory verifier, or minted by the Keycloak-shaped
    test issuer (over HTTP: discovery, JWKS) and checked by the production verifier."""
    keycloak = KeycloakTokenVerifierHarness() if request.param == "keycloak-issuer" else None
    static = StaticTokens()
    verifier = keycloak.verifier if keycloak is not None else static.verifier
    issue = keycloak.issue if keycloak is not None else static.issue
    cluster = FakeClusterGateway(auto_progress=True)
    container = build(load_settings(), token_verifier=verifier, cluster_gateway=cluster)
    gateway = make_server("127.0.0.1", 0, container)
    thread = threading.Thread(target=gateway.serve_forever, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            yield World(gateway, client, issue, container, cluster, keycloak)
    finally:
        gateway.shutdown()
        gateway.server_close()
        if keycloak is not None:
            keycloak.close()


def new_project() -> ProjectRef:
    return ProjectRef.parse(str(uuid.uuid4()), str(uuid.uuid4()))


def person(name: str, *groups: str) -> Principal:
    return Principal(
        subject=f"{name}-{uuid.uuid4().hex[:8]}", username=name, memberships=parse_groups(groups)
    )


def member(project: ProjectRef, name: str = "ada") -> Principal:
    return person(name, f"/proj/{project.virtual_lab_id}/{project.project_id}/member")


def admin(project: ProjectRef, name: str = "pat") -> Principal:
    return person(name, f"/proj/{project.virtual_lab_id}/{project.project_id}/admin")


def runs_url(project: ProjectRef) -> str:
    return f"/v1/virtual-labs/{project.virtual_lab_id}/projects/{project.project_id}/runs"


def assert_problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM_TYPE_BASE + kind
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


def submit(
    world: World, project: ProjectRef, who: dict[str, str], body: object = REQUEST
) -> dict[str, Any]:
    response = world.client.post(runs_url(project), json=body, headers=who)
    assert response.status_code == 202, response.text
    run: dict[str, Any] = response.json()
    return run


# ================================================================ public endpoints


def test_health_answers_without_a_token(world: World) -> None:
    response = world.client.get("/v1/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_the_openapi_document_is_served_without_a_token(world: World) -> None:
    response = world.client.get("/v1/openapi.json")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document()


# ================================================================ runs


def test_a_submission_is_accepted_with_the_run_and_where_to_find_it(world: World) -> None:
    project = new_project()
    ada = member(project)

    response = world.client.post(runs_url(project), json=REQUEST, headers=world.login(ada))

    assert response.status_code == 202
    run = response.json()
    assert response.headers["location"] == f"{runs_url(project)}/{run['run_id']}"
    assert run["state"] == "ACCEPTED"
    assert run["requested_by"] == {"subject": ada.subject, "username": "ada"}
    assert run["request"]["command"] == REQUEST["command"]
    assert [(e["to_state"], e["reason"]) for e in run["timeline"]] == [
        ("ACCEPTED", "request accepted")
    ]
    assert world.container.instance_orchestrator().describe(project) is not None  # instance started


def test_a_run_shows_its_state_timeline_job_sync_and_registration(world: World) -> None:
    project = new_project()
    who = world.login(member(project))
    run_id = submit(world, project, who, WITH_OUTPUTS)["run_id"]
    world.drive(project, run_id, lambda r: r.terminal)

    response = world.client.get(f"{runs_url(project)}/{run_id}", headers=who)

    assert response.status_code == 200
    run = response.json()
    assert run["state"] == "DONE"
    assert run["terminal"] is True
    assert run["stale"] is None
    path = [e["to_state"] for e in run["timeline"] if e["from_state"] != e["to_state"]]
    assert path == [
        "ACCEPTED",
        "PROVISIONING",
        "SUBMITTING",
        "QUEUED",
        "RUNNING",
        "SYNCING",
        "REGISTERING",
        "DONE",
    ]
    assert all(e["reason"] for e in run["timeline"])
    assert run["job"]["job_id"]
    assert run["job"]["exit_code"] == 0
    assert run["scheduler_raw"].endswith("|COMPLETED|0:0")
    assert run["sync"]["outcome"] == "confirmed"
    assert [f["path"] for f in run["sync"]["files"]] == ["output/spikes.h5"]
    assert run["knowledge_graph"]["activity_id"]


def test_a_run_the_cluster_does_not_answer_about_is_stale_not_failed(world: World) -> None:
    project = new_project()
    who = world.login(member(project))
    run_id = submit(world, project, who)["run_id"]
    world.drive(project, run_id, lambda r: r.job_id is not None)
    world.cluster.unreachable = True
    try:
        world.container.pipeline().sweep(project)
        run = world.client.get(f"{runs_url(project)}/{run_id}", headers=who).json()
        log = world.client.get(f"{runs_url(project)}/{run_id}/log", headers=who)
    finally:
        world.cluster.unreachable = False

    assert run["state"] in ("QUEUED", "RUNNING")
    assert run["stale"]["reason"]
    assert run["stale"]["since"]
    assert_problem(log, 503, "cluster-unreachable")
    assert log.headers["retry-after"]


def test_the_log_is_the_end_of_the_jobs_log(world: World) -> None:
    project = new_project()
    who = world.login(member(project))
    run_id = submit(world, project, who, WITH_OUTPUTS)["run_id"]
    before = world.client.get(f"{runs_url(project)}/{run_id}/log", headers=who)
    world.drive(project, run_id, lambda r: r.terminal)

    after = world.client.get(f"{runs_url(project)}/{run_id}/log?max_bytes=5", headers=who)
    whole = world.client.get(f"{runs_url(project)}/{run_id}/log", headers=who)

    assert before.status_code == 200
    assert before.json()["text"] == ""  # no job yet
    assert after.status_code == 200
    assert after.json() == {"run_id": run_id, "max_bytes": 5, "text": "done\n"}
    assert whole.json()["text"].endswith(" done\n")
    bad = world.client.get(f"{runs_url(project)}/{run_id}/log?max_bytes=0", headers=who)
    assert_problem(bad, 422, "invalid-request")


def test_the_outputs_are_the_synchronised_files_once_confirmed(world: World) -> None:
    project = new_project()
    who = world.login(member(project))
    run_id = submit(world, project, who, WITH_OUTPUTS)["run_id"]
    url = f"{runs_url(project)}/{run_id}/outputs"
    before = world.client.get(url, headers=who)
    world.drive(project, run_id, lambda r: r.terminal)

    after = world.client.get(url, headers=who)

    assert before.status_code == 200
    assert before.json() == {"run_id": run_id, "state": "ACCEPTED", "synced": False, "files": []}
    assert after.status_code == 200
    body = after.json()
    assert body["state"] == "DONE"
    assert body["synced"] is True
    [spikes] = body["files"]
    assert spikes["path"] == "output/spikes.h5"
    assert spikes["size"] > 0
    assert spikes["location"]
    assert set(spikes) == {"path", "size", "location", "digest"}  # digest: null on Lustre
    view = world.client.get(f"{runs_url(project)}/{run_id}", headers=who).json()
    assert body["files"] == view["sync"]["files"]


def test_the_provenance_is_what_the_graph_holds_of_the_run(world: World) -> None:
    project = new_project()
    who = world.login(member(project))
    run_id = submit(world, project, who, WITH_OUTPUTS)["run_id"]
    url = f"{runs_url(project)}/{run_id}/provenance"
    before = world.client.get(url, headers=who)
    world.drive(project, run_id, lambda r: r.terminal)

    after = world.client.get(url, headers=who)

    problem = assert_problem(before, 404, "not-found")
    assert "nothing registered" in problem["detail"]
    assert after.status_code == 200, after.text
    body = after.json()
    run = world.client.get(f"{runs_url(project)}/{run_id}", headers=who).json()
    assert body["run_id"] == run_id
    assert body["activity_id"] == run["knowledge_graph"]["activity_id"]
    assert body["activity"]["@id"] == body["activity_id"]
    assert body["revision"] >= 1
    assert body["withdrawn"] is False
    assert [e["@id"] for e in body["entities"]] == run["knowledge_graph"]["entity_ids"]
    assert body["entities"][0]["wasGeneratedBy"] == body["activity_id"]


def test_outputs_and_provenance_of_an_unknown_run_are_not_found(world: World) -> None:
    project = new_project()
    who = world.login(member(project))

    for what in ("outputs", "provenance"):
        response = world.client.get(f"{runs_url(project)}/no-such-run/{what}", headers=who)
        problem = assert_problem(response, 404, "not-found")
        assert "no-such-run" in problem["detail"]


def test_listing_pages_through_the_runs_newest_first(world: World) -> None:
    project = new_project()
    who = world.login(member(project))
    made = [submit(world, project, who)["run_id"] for _ in range(3)]

    first = world.client.get(runs_url(project), params={"limit": 2}, headers=who).json()
    second = world.client.get(
        runs_url(project), params={"limit": 2, "cursor": first["next_cursor"]}, headers=who
    ).json()

    assert [r["run_id"] for r in first["runs"] + second["runs"]] == made[::-1]
    assert first["next_cursor"] is not None
    assert second["next_cursor"] is None
    assert first["runs"][0]["state"] == "ACCEPTED"
    assert first["runs"][0]["name"] == REQUEST["name"]


def test_listing_filters_by_state_repeated_or_comma_separated(world: World) -> None:
    project = new_project()
    who = world.login(member(project))
    kept, cancelled = (submit(world, project, who)["run_id"] for _ in range(2))
    world.client.post(f"{runs_url(project)}/{cancelled}/cancel", headers=who)

    def listed(query: str) -> list[str]:
        response = world.client.get(f"{runs_url(project)}?{query}", headers=who)
        assert response.status_code == 200, response.text
        return sorted(r["run_id"] for r in response.json()["runs"])

    assert listed("state=CANCELLED") == [cancelled]
    assert listed("state=ACCEPTED") == [kept]
    assert listed("state=ACCEPTED&state=CANCELLED") == sorted([kept, cancelled])
    assert listed("state=ACCEPTED,CANCELLED") == sorted([kept, cancelled])
    assert listed("state=DONE") == []
    unknown = world.client.get(f"{runs_url(project)}?state=PAUSED", headers=who)
    assert_problem(unknown, 422, "invalid-request")


def test_an_unknown_query_parameter_is_refused_by_name(world: World) -> None:
    project = new_project()

    response = world.client.get(
        runs_url(project), params={"staet": "DONE"}, headers=world.login(member(project))
    )

    problem = assert_problem(response, 422, "invalid-request")
    assert problem["errors"] == [
        {"field": "query.staet", "rule": "is not a parameter of this operation"}
    ]


def test_a_cursor_is_valid_only_for_its_own_listing(world: World) -> None:
    project = new_project()
    who = world.login(member(project))
    for _ in range(2):
        submit(world, project, who)
    cursor = world.client.get(runs_url(project), params={"limit": 1}, headers=who).json()[
        "next_cursor"
    ]

    other_filter = world.client.get(
        runs_url(project), params={"limit": 1, "cursor": cursor, "state": "DONE"}, headers=who
    )
    garbage = world.client.get(runs_url(project), params={"cursor": "%%%"}, headers=who)

    assert_problem(other_filter, 422, "invalid-request")
    body = assert_problem(garbage, 422, "invalid-request")
    assert body["errors"] == [{"field": "cursor", "rule": "is not a cursor of this listing"}]


def test_a_cancel_is_accepted_and_repeating_it_is_harmless(world: World) -> None:
    project = new_project()
    who = world.login(member(project))
    run_id = submit(world, project, who)["run_id"]
    url = f"{runs_url(project)}/{run_id}/cancel"

    first = world.client.post(url, json={"reason": "wrong parameters"}, headers=who)
    again = world.client.post(url, headers=who)

    assert first.status_code == 202
    assert first.json()["state"] == "CANCELLED"
    assert first.json()["timeline"][-1]["reason"] == "wrong parameters"
    assert again.status_code == 202
    assert again.json()["version"] == first.json()["version"]


def test_a_finished_run_cannot_be_cancelled(world: World) -> None:
    project = new_project()
    who = world.login(member(project))
    run_id = submit(world, project, who)["run_id"]
    world.drive(project, run_id, lambda r: r.terminal)

    response = world.client.post(f"{runs_url(project)}/{run_id}/cancel", headers=who)

    assert_problem(response, 409, "conflict")


def test_the_instance_of_a_project_is_shown_once_started(world: World) -> None:
    project, idle = new_project(), new_project()
    who = world.login(
        person("ada", *(f"/proj/{p.virtual_lab_id}/{p.project_id}/member" for p in (project, idle)))
    )
    submit(world, project, who)

    started = world.client.get(runs_url(project).replace("/runs", "/instance"), headers=who)
    none = world.client.get(runs_url(idle).replace("/runs", "/instance"), headers=who)

    assert started.status_code == 200
    assert started.json()["instance"]["status"] == "RUNNING"
    assert started.json()["instance"]["live"] is True
    assert none.status_code == 200
    assert none.json() == {
        "virtual_lab_id": idle.virtual_lab_id,
        "project_id": idle.project_id,
        "instance": None,
    }


def test_a_run_of_another_project_is_not_found(world: World) -> None:
    project, other = new_project(), new_project()
    who = world.login(
        person(
            "ada", *(f"/proj/{p.virtual_lab_id}/{p.project_id}/member" for p in (project, other))
        )
    )
    run_id = submit(world, project, who)["run_id"]

    response = world.client.get(f"{runs_url(other)}/{run_id}", headers=who)

    assert_problem(response, 404, "not-found")


# ================================================================ idempotency


def test_an_idempotency_key_replays_the_same_run(world: World) -> None:
    project = new_project()
    who = {**world.login(member(project)), "Idempotency-Key": "submit-" + uuid.uuid4().hex}

    first = world.client.post(runs_url(project), json=REQUEST, headers=who)
    again = world.client.post(runs_url(project), json=REQUEST, headers=who)
    listed = world.client.get(runs_url(project), headers=who).json()["runs"]

    assert first.status_code == again.status_code == 202
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.json()["idempotency_key"] == who["Idempotency-Key"]
    assert len(listed) == 1


def test_an_idempotency_key_with_another_body_is_a_conflict(world: World) -> None:
    project = new_project()
    who = {**world.login(member(project)), "Idempotency-Key": "k-" + uuid.uuid4().hex}
    submit(world, project, who)

    response = world.client.post(
        runs_url(project), json={**REQUEST, "name": "another"}, headers=who
    )

    assert_problem(response, 409, "idempotency-conflict")


def test_an_idempotency_key_must_be_printable_ascii(world: World) -> None:
    project = new_project()
    who = {**world.login(member(project)), "Idempotency-Key": "has space"}

    response = world.client.post(runs_url(project), json=REQUEST, headers=who)

    assert_problem(response, 422, "invalid-request")


# ================================================================ what a body must be


def test_a_body_too_large_is_refused(world: World) -> None:
    project = new_project()
    big = {**REQUEST, "script": "x" * (http_api.MAX_BODY_BYTES + 1)}

    response = world.client.post(runs_url(project), json=big, headers=world.login(member(project)))

    assert_problem(response, 413, "payload-too-large")
    assert (
        world.client.get(runs_url(project), headers=world.login(member(project))).json()["runs"]
        == []
    )


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "application/json; charset=latin-1",
        None,
    ],
)
def test_a_body_that_is_not_json_is_refused(world: World, content_type: str | None) -> None:
    project = new_project()
    headers = world.login(member(project))
    if content_type is not None:
        headers["Content-Type"] = content_type

    response = world.client.post(runs_url(project), content=json.dumps(REQUEST), headers=headers)

    assert_problem(response, 415, "unsupported-media-type")


def test_the_json_media_type_is_case_insensitive(world: World) -> None:
    project = new_project()
    headers = {**world.login(member(project)), "Content-Type": "Application/JSON; Charset=UTF-8"}

    response = world.client.post(runs_url(project), content=json.dumps(REQUEST), headers=headers)

    assert response.status_code == 202


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe{}",
        b'{"name": NaN, "command": ["x"]}',
        b'{"command": ["x"], "command": ["y"]}',
    ],
    ids=["malformed", "not-utf8", "nan", "repeated-key"],
)
def test_a_body_that_cannot_be_decoded_is_refused(world: World, body: bytes) -> None:
    project = new_project()
    headers = {**world.login(member(project)), "Content-Type": "application/json"}

    response = world.client.post(runs_url(project), content=body, headers=headers)

    problem = assert_problem(response, 422, "invalid-request")
    assert problem["errors"][0]["field"] == "body"


def test_an_unknown_field_is_refused_by_name(world: World) -> None:
    project = new_project()

    response = world.client.post(
        runs_url(project),
        json={**REQUEST, "priority": "high"},
        headers=world.login(member(project)),
    )

    problem = assert_problem(response, 422, "invalid-request")
    assert problem["errors"] == [
        {"field": "body.priority", "rule": "Extra inputs are not permitted"}
    ]


def test_every_invalid_value_is_named(world: World) -> None:
    project = new_project()
    body = {"command": ["x"], "script": "y", "resources": {"nodes": 0}, "outputs": ["../etc"]}

    response = world.client.post(runs_url(project), json=body, headers=world.login(member(project)))

    fields = {e["field"] for e in assert_problem(response, 422, "invalid-request")["errors"]}
    assert {"body.resources.nodes", "body.outputs.0"} <= fields


def test_an_unknown_field_in_a_cancel_is_refused(world: World) -> None:
    project = new_project()
    who = world.login(member(project))
    run_id = submit(world, project, who)["run_id"]

    response = world.client.post(
        f"{runs_url(project)}/{run_id}/cancel", json={"reason": "x", "force": True}, headers=who
    )

    assert_problem(response, 422, "invalid-request")


# ================================================================ routing


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/runs/{run}", "GET"),
        ("PUT", "/runs", "GET, POST"),
        ("GET", "/runs/{run}/cancel", "POST"),
        ("HEAD", "/runs/{run}/log", "GET"),
        ("OPTIONS", "/instance", "GET"),
    ],
)
def test_a_wrong_method_on_a_known_path_is_405_with_allow(
    world: World, method: str, path: str, allow: str
) -> None:
    project = new_project()
    url = runs_url(project).removesuffix("/runs") + path.replace("{run}", "r-1")

    response = world.client.request(method, url, headers=world.login(member(project)))

    assert response.status_code == 405
    assert response.headers["allow"] == allow
    if method != "HEAD":
        assert_problem(response, 405, "method-not-allowed")


def test_a_wrong_method_on_a_public_path_is_405_without_a_token(world: World) -> None:
    response = world.client.post("/v1/healthz")

    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "GET"


@pytest.mark.parametrize(
    "path",
    ["/v1/nothing", "/v1/virtual-labs", "/runs/", "/v1/healthz%0A", "/runs/a%0Ab/log", "/runs/%0A"],
)
def test_an_unknown_path_is_404(world: World, path: str) -> None:
    project = new_project()
    url = runs_url(project) + path.removeprefix("/runs") if path.startswith("/runs") else path

    response = world.client.get(url, headers=world.login(member(project)))

    assert_problem(response, 404, "not-found")


# ================================================================ authentication


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer unknown-token",
        "Bearer",
        "Bearer two tokens",
        "Basic YWRhOnNlY3JldA==",
        "Token {token}",
        "Bearer  {token}",
        "Bearer {token}\tx",
    ],
    ids=repr,
)
def test_a_bad_token_is_401_saying_nothing_about_why(
    world: World, authorization: str | None
) -> None:
    project = new_project()
    valid = world.login(member(project))["Authorization"].removeprefix("Bearer ")
    headers = {} if authorization is None else {"Authorization": authorization.format(token=valid)}

    response = world.client.get(runs_url(project), headers=headers)

    body = assert_problem(response, 401, "unauthenticated")
    assert body == {
        "type": PROBLEM_TYPE_BASE + "unauthenticated",
        "title": "Unauthorized",
        "status": 401,
        "detail": "authentication required",
    }
    assert valid not in response.text


def test_the_bearer_scheme_is_case_insensitive(world: World) -> None:
    project = new_project()
    token = world.login(member(project))["Authorization"].removeprefix("Bearer ")

    response = world.client.get(runs_url(project), headers={"authorization": f"bearer {token}"})

    assert response.status_code == 200


def test_the_authorizer_answer_is_cached_by_token_across_methods_and_paths(world: World) -> None:
    project = new_project()
    who = world.login(member(project))
    calls = world.gateway.authorizer_calls

    run_id = submit(world, project, who)["run_id"]
    world.client.get(runs_url(project), headers=who)
    world.client.get(f"{runs_url(project)}/{run_id}", headers=who)
    world.client.post(f"{runs_url(project)}/{run_id}/cancel", headers=who)

    assert world.gateway.authorizer_calls == calls + 1


def _policy(effect: str, resource: str) -> Callable[..., dict[str, Any]]:
    def answer(event: dict[str, Any], verifier: object) -> dict[str, Any]:
        return {
            "principalId": "someone",
            "policyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {"Action": "execute-api:Invoke", "Effect": effect, "Resource": resource}
                ],
            },
            "context": authorization.principal_context(person("someone")),
        }

    return answer


def _crash(event: dict[str, Any], verifier: object) -> dict[str, Any]:
    raise RuntimeError("the issuer's keys could not be fetched")


@pytest.mark.parametrize(
    ("authorizer", "status", "kind"),
    [
        (_policy("Allow", "arn:aws:execute-api:*:*:local/local/*/*"), 200, None),
        (_policy("Deny", "arn:aws:execute-api:*:*:local/local/*/*"), 403, "forbidden"),
        (_policy("Allow", "arn:aws:execute-api:*:*:local/prod/*/*"), 403, "forbidden"),
        (_crash, 500, "internal-error"),
    ],
    ids=["allow", "deny", "other-stage", "crash"],
)
def test_the_gateway_enforces_the_authorizers_policy(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    authorizer: Callable[..., dict[str, Any]],
    status: int,
    kind: str | None,
) -> None:
    monkeypatch.setattr(authorization, "authorize", authorizer)

    response = world.client.get(
        f"/v1/virtual-labs/{uuid.uuid4()}/projects/{uuid.uuid4()}/instance",
        headers={"Authorization": f"Bearer {uuid.uuid4().hex}"},
    )

    if kind is None:
        assert response.status_code == 404  # allowed through: the API found no membership
    else:
        body = assert_problem(response, status, kind)
        assert "issuer" not in body["detail"]


def test_the_handler_modules_import_only_what_their_cold_path_needs() -> None:
    code = (
        "import json, sys\n"
        "import obp_workflow.entrypoints.aws_lambda.authorizer\n"
        "authorizer = sorted(sys.modules)\n"
        "import obp_workflow.entrypoints.aws_lambda.api\n"
        "print(json.dumps([authorizer, sorted(sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    authorizer, api = (set(modules) for modules in json.loads(out.stdout))

    def loaded(modules: set[str], *names: str) -> set[str]:
        return {m for m in modules for n in names if m == n or m.startswith(n + ".")}

    heavy = ("boto3", "botocore", "aws_lambda_powertools", "pydantic", "dependency_injector")
    assert loaded(authorizer, *heavy) == set()
    assert loaded(authorizer, "obp_workflow.entrypoints.composition.root") == set()
    assert loaded(api, "boto3", "dependency_injector") == set()
    # Powertools' own __init__ imports the bare botocore package (~7 ms) for its user-agent hook.
    assert loaded(api, "botocore") <= {"botocore"}
    assert (
        loaded(api, "obp_workflow.entrypoints.composition.root", "obp_workflow.adapters") == set()
    )


def test_the_authorizer_allows_the_whole_stage_and_passes_the_caller_as_flat_strings() -> None:
    project, other = new_project(), new_project()
    ada = person(
        "ada",
        f"/proj/{project.virtual_lab_id}/{project.project_id}/member",
        f"/vlab/{other.virtual_lab_id}/admin",
        "/service/workflow/admin",  # not a membership: dropped
    )
    event = {
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:eu-north-1:123456789012:abc123/prod/GET/v1/healthz",
        "headers": {"AUTHORIZATION": "Bearer tok"},
    }

    answer = authorization.authorize(event, FakeTokenVerifier({"tok": ada}))
    odd_path = {**event, "methodArn": event["methodArn"] + "/a\nb"}

    assert authorization.authorize(odd_path, FakeTokenVerifier({"tok": ada})) == answer
    assert answer["principalId"] == ada.subject
    assert answer["policyDocument"] == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Action": "execute-api:Invoke",
                "Effect": "Allow",
                "Resource": "arn:aws:execute-api:eu-north-1:123456789012:abc123/prod/*/*",
            }
        ],
    }
    context = answer["context"]
    assert all(isinstance(v, str) for v in context.values())
    assert context["subject"] == ada.subject
    assert context["username"] == "ada"
    assert authorization.principal_from_context(context) == ada


def test_the_authorizer_refuses_with_unauthorized_and_nothing_else() -> None:
    event = {
        "type": "REQUEST",
        "methodArn": "arn:aws:execute-api:eu-north-1:123456789012:abc123/prod/GET/v1/x",
        "multiValueHeaders": {"Authorization": ["Bearer a", "Bearer b"]},
    }
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        authorization.authorize(event, FakeTokenVerifier())
    for value in ("Bearer unknown", "Bearer tok ", "Bearer ", " Bearer tok", "Bearer tok,tok"):
        event["multiValueHeaders"] = {"authorization": [value]}
        with pytest.raises(Exception, match=r"^Unauthorized$"):
            authorization.authorize(event, FakeTokenVerifier({"tok": member(new_project())}))


def test_the_api_refuses_an_event_without_a_caller() -> None:
    project = new_project()
    event = {
        "httpMethod": "GET",
        "path": runs_url(project),
        "headers": {},
        "multiValueHeaders": {},
        "requestContext": {"stage": "local", "path": runs_url(project)},
        "body": None,
        "isBase64Encoded": False,
    }

    response = http_api.handle(event, None, build(load_settings()).requests)

    assert response["statusCode"] == 401
    assert json.loads(response["body"])["type"] == PROBLEM_TYPE_BASE + "unauthenticated"


def _direct(method: str, project: ProjectRef, path: str, ada: Principal) -> dict[str, Any]:
    """An API Gateway event for the API handler, with ``ada`` as the authorizer's caller."""
    url = runs_url(project) + path
    context = authorization.principal_context(ada)
    return {
        "httpMethod": method,
        "path": url,
        "headers": {"Content-Type": "application/json"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "requestContext": {
            "stage": "s",
            "path": url,
            "authorizer": {"principalId": ada.subject, **context},
        },
        "body": json.dumps(REQUEST) if method == "POST" else None,
        "isBase64Encoded": False,
    }


def test_a_response_that_breaks_its_model_is_a_500_problem_not_a_422(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = new_project()
    ada = member(project)
    container = build(load_settings())
    monkeypatch.setattr(routes, "run_view", lambda run: {"run_id": run.run_id})

    response = http_api.handle(_direct("POST", project, "", ada), None, container.requests)

    assert response["statusCode"] == 500
    assert response["multiValueHeaders"]["Content-Type"] == [PROBLEM_JSON]
    body = json.loads(response["body"])
    assert body["type"] == PROBLEM_TYPE_BASE + "internal-error"
    assert "run_id" not in response["body"]


def test_an_unexpected_error_is_a_500_problem_that_says_nothing_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = new_project()
    container = build(load_settings())

    def broken(run: SimulationRun) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(routes, "run_view", broken)

    response = http_api.handle(
        _direct("POST", project, "", member(project)), None, container.requests
    )

    assert response["statusCode"] == 500
    assert json.loads(response["body"])["type"] == PROBLEM_TYPE_BASE + "internal-error"
    assert "secret" not in response["body"]


def test_the_lambda_handlers_use_an_injected_container() -> None:
    project = new_project()
    ada = member(project)
    container = build(load_settings(), token_verifier=FakeTokenVerifier({"tok": ada}))
    lambda_api.use_container(container)
    lambda_authorizer.use_container(container)
    try:
        answer = lambda_authorizer.handler(
            {
                "type": "REQUEST",
                "methodArn": "arn:aws:execute-api:r:1:api/s/GET/x",
                "headers": {"Authorization": "Bearer tok"},
            },
            None,
        )
        event = {
            "httpMethod": "POST",
            "path": runs_url(project),
            "headers": {"Content-Type": "application/json"},
            "multiValueHeaders": {"Content-Type": ["application/json"]},
            "requestContext": {
                "stage": "s",
                "path": runs_url(project),
                "authorizer": {"principalId": ada.subject, **answer["context"]},
            },
            "body": json.dumps(REQUEST),
            "isBase64Encoded": False,
        }
        response = lambda_api.handler(event, None)
    finally:
        lambda_api.use_container(None)
        lambda_authorizer.use_container(None)

    assert response["statusCode"] == 202
    assert len(container.run_repository().list(project).runs) == 1


# ================================================================ tenancy, as properties

ROLES = ("member", "admin")


@st.composite
def outsiders(draw: st.DrawFn, target: ProjectRef) -> Principal:
    """Anyone whose memberships give no role in ``target``, however close they come to it."""
    uuids = st.uuids().map(str)
    near = st.one_of(
        # a role in another project, anywhere
        st.tuples(uuids, uuids, st.sampled_from(ROLES)).map(
            lambda t: f"/proj/{t[0]}/{t[1]}/{t[2]}"
        ),
        # a role in another project of the target's Virtual Lab
        st.tuples(uuids, st.sampled_from(ROLES)).map(
            lambda t: f"/proj/{target.virtual_lab_id}/{t[0]}/{t[1]}"
        ),
        # the target's project id under another Virtual Lab
        st.tuples(uuids, st.sampled_from(ROLES)).map(
            lambda t: f"/proj/{t[0]}/{target.project_id}/{t[1]}"
        ),
        # a plain member of the target's Virtual Lab (only its admins see its projects)
        st.just(f"/vlab/{target.virtual_lab_id}/member"),
        # an admin of another Virtual Lab
        uuids.map(lambda v: f"/vlab/{v}/admin"),
        # near misses that are not memberships at all
        st.sampled_from(
            [
                f"/proj/{target.virtual_lab_id}/{target.project_id}/owner",
                f"/proj/{target.virtual_lab_id}/{target.project_id}",
                f"proj/{target.virtual_lab_id}/{target.project_id}/admin/x",
                f"/vlab/{target.virtual_lab_id}/member/admin",
            ]
        ),
    )
    groups = draw(st.lists(near, max_size=6))
    return person("mallory", *groups)


TARGET = new_project()


@given(mallory=outsiders(TARGET))
@settings(max_examples=30, deadline=None)
def test_a_member_of_another_project_can_do_nothing_in_this_one(
    world: World, mallory: Principal
) -> None:
    owner = world.login(member(TARGET, "owner"))
    victim = submit(world, TARGET, owner)["run_id"]
    who = world.login(mallory)
    base = runs_url(TARGET)
    made_before = len(world.container.run_repository().list(TARGET, limit=500).runs)

    answers = {
        "list": world.client.get(base, headers=who),
        "read": world.client.get(f"{base}/{victim}", headers=who),
        "read-missing": world.client.get(f"{base}/no-such-run", headers=who),
        "log": world.client.get(f"{base}/{victim}/log", headers=who),
        "outputs": world.client.get(f"{base}/{victim}/outputs", headers=who),
        "provenance": world.client.get(f"{base}/{victim}/provenance", headers=who),
        "cancel": world.client.post(f"{base}/{victim}/cancel", headers=who),
        "submit": world.client.post(base, json=REQUEST, headers=who),
        "instance": world.client.get(base.replace("/runs", "/instance"), headers=who),
    }

    for what, response in answers.items():
        assert response.status_code == 404, (what, response.text)
        assert_problem(response, 404, "not-found")
    # The answer about an existing run is the answer about a missing one: nothing leaks.
    assert answers["read"].json() == answers["read-missing"].json()
    runs = world.container.run_repository()
    assert runs.get(TARGET, victim).state.value == "ACCEPTED"
    assert len(runs.list(TARGET, limit=500).runs) == made_before


@given(admin_kind=st.sampled_from(["project-admin", "vlab-admin"]), reason=st.text(max_size=40))
@settings(max_examples=20, deadline=None)
def test_only_an_admin_may_cancel_another_members_run(
    world: World, admin_kind: str, reason: str
) -> None:
    project = new_project()
    owner = world.login(member(project, "owner"))
    colleague = world.login(member(project, "colleague"))
    boss = (
        admin(project, "boss")
        if admin_kind == "project-admin"
        else person("boss", f"/vlab/{project.virtual_lab_id}/admin")
    )
    run_id = submit(world, project, owner)["run_id"]
    url = f"{runs_url(project)}/{run_id}/cancel"

    refused = world.client.post(url, json={"reason": reason}, headers=colleague)
    still = world.client.get(f"{runs_url(project)}/{run_id}", headers=colleague)
    done = world.client.post(url, json={"reason": reason}, headers=world.login(boss))

    assert_problem(refused, 403, "forbidden")
    assert still.json()["state"] == "ACCEPTED"
    assert done.status_code == 202
    assert done.json()["state"] == "CANCELLED"
    assert done.json()["cancelled_by"] == "boss"


# ================================================================ Keycloak tokens over HTTP

#: Tokens the Keycloak-shaped issuer mints wrongly, each refused with the same bare 401.
BAD_KEYCLOAK_TOKENS: dict[str, Callable[[KeycloakTokenVerifierHarness, str], str]] = {
    "expired": lambda k, sub: k.issuer.mint(sub, lifetime=-600),
    "not-yet-valid": lambda k, sub: k.issuer.mint(sub, not_before=k.issuer.clock() + 3600),
    "wrong-issuer": lambda k, sub: k.issuer.mint(sub, extra={"iss": "https://evil/realms/x"}),
    "wrong-audience": lambda k, sub: k.issuer.mint(sub, audience="other", azp="other-client"),
    "no-subject": lambda k, sub: k.issuer.mint(sub, drop=["sub"]),
    "tampered-payload": lambda k, sub: _tamper(k.issuer.mint(sub), part=1),
    "tampered-signature": lambda k, sub: _tamper(k.issuer.mint(sub), part=2),
    "alg-none": lambda k, sub: _unsigned(k.issuer.claims(sub)),
}


def _tamper(token: str, part: int) -> str:
    parts = token.split(".")
    text = parts[part]
    parts[part] = text[:-2] + ("AA" if text[-2:] != "AA" else "BB")
    return ".".join(parts)


def _unsigned(claims: dict[str, Any]) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


@pytest.mark.parametrize("world", ["keycloak-issuer"], indirect=True)
@pytest.mark.parametrize("kind", list(BAD_KEYCLOAK_TOKENS))
def test_a_bad_keycloak_token_is_401_through_the_gateway(world: World, kind: str) -> None:
    assert world.keycloak is not None
    project = new_project()
    token = BAD_KEYCLOAK_TOKENS[kind](world.keycloak, "bad-" + kind)
    response = world.client.get(runs_url(project), headers={"Authorization": f"Bearer {token}"})
    body = assert_problem(response, 401, "unauthenticated")
    assert body["detail"] == "authentication required"
    assert token not in response.text
