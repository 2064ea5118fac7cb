"""Schemathesis against the served OpenAPI document, over real HTTP through the local gateway.

Every operation is generated from the document (examples, coverage and fuzzing phases, then the
stateful phase that chains submit -> read/cancel/log by the links it infers), with a valid token
of a project admin and the path pinned to that project so that most requests get past the
access check. Every check of schemathesis runs: no 5xx, every status and body as documented,
valid data accepted, invalid data rejected, missing auth refused, unknown methods 405.

Two documented exceptions to "valid data accepted": the request's semantic rules (exactly one
of ``command``/``script``, safe relative paths, metadata size, no control characters in the name
or the metadata) go beyond its JSON Schema, and an opaque cursor cannot be described by one; both
are rejected with 422 by design.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.core.parameters import ParameterLocation

from obp_workflow.adapters.fake.token_verifier import FakeTokenVerifier
from obp_workflow.core.identity import Principal, parse_groups
from obp_workflow.entrypoints.composition.root import build
from obp_workflow.entrypoints.composition.settings import load_settings
from obp_workflow.entrypoints.http.openapi import openapi_document
from obp_workflow.entrypoints.local.gateway import LocalGateway, make_server

#: Examples per operation and phase: modest, for a 2-core CI.
MAX_EXAMPLES = 30
VLAB = str(uuid.uuid4())
PROJECT = str(uuid.uuid4())
TOKEN = "schemathesis-" + uuid.uuid4().hex
ADMIN = Principal(
    subject="st-admin",
    username="schemathesis",
    memberships=parse_groups([f"/proj/{VLAB}/{PROJECT}/admin"]),
)
#: The checks' defaults, plus 422 where the document cannot say everything the service checks.
SEMANTIC_422 = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]


def _start_gateway() -> LocalGateway:
    container = build(load_settings(), token_verifier=FakeTokenVerifier({TOKEN: ADMIN}))
    server = make_server("127.0.0.1", 0, container)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# Started when the module loads: schemathesis' lazy `from_fixture` loader does not work with
# pytest 9 (it sets `node._nodeid`), so the schema is read from the served document at import.
GATEWAY = _start_gateway()
schema = schemathesis.openapi.from_url(
    f"{GATEWAY.url}/v1/openapi.json",
    config=schemathesis.Config.from_dict(
        {
            "auth": {"openapi": {"bearerAuth": {"bearer": TOKEN}}},
            "generation": {"max-examples": MAX_EXAMPLES},
            "parameters": {"path.vlab": VLAB, "path.project": PROJECT},
            "operations": [
                {
                    "include-operation-id": ["submitRun", "listRuns"],
                    "checks": {"positive_data_acceptance": {"expected-statuses": SEMANTIC_422}},
                }
            ],
        }
    ),
)


@pytest.fixture(scope="module", autouse=True)
def _stop_gateway() -> Iterator[None]:
    yield
    GATEWAY.shutdown()
    GATEWAY.server_close()


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_document(case: schemathesis.Case) -> None:
    case.call_and_validate()


class _PinnedToTheProject(schema.as_state_machine()):  # type: ignore[misc]
    """The stateful phase, with every path in the project the token's admin belongs to."""

    def before_call(self, case: schemathesis.Case) -> None:
        negative = case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH)
        if "vlab" in case.path_parameters and not negative:
            case.path_parameters.update(vlab=VLAB, project=PROJECT)
        if "run" in case.path_parameters and not case.path_parameters["run"]:
            # A link from an empty listing (`runs[0].run_id`) resolves to nothing, and
            # `/runs//cancel` would reach the server as `/runs/cancel`: ask for a missing run.
            case.path_parameters["run"] = "missing-" + uuid.uuid4().hex


def test_chains_of_operations_conform_to_the_document() -> None:
    machine = _PinnedToTheProject
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=10,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


def test_the_served_document_is_the_generated_one() -> None:
    assert httpx.get(f"{GATEWAY.url}/v1/openapi.json").json() == openapi_document()
