"""The Lambda authorizer's cold path: what a fresh interpreter imports for one invocation.

A structural check (which packages are loaded), not a timing: the authorizer builds only its
token verifier (``entrypoints/composition/token_verifier.py``), never the composition root;
with the Keycloak verifier, a valid token (discovery, JWKS and the signature included) needs no
HTTP client library. The API's cold path on the aws family: ``test_aws_wiring.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from obp_workflow.adapters.fake.token_verifier import FakeTokenVerifier
from obp_workflow.entrypoints.composition.token_verifier import (
    TokenSettings,
    TokenSettingsError,
    build_token_verifier,
    load_token_settings,
)
from tests.keycloak_issuer import KeycloakIssuer

#: Never on the authorizer's cold path, whichever adapters are wired.
HEAVY = (
    "boto3",
    "botocore",
    "paramiko",
    "luigi",
    "pydantic_settings",
    "dependency_injector",
    "aws_lambda_powertools",
)
#: Not on the Keycloak verifier's path either: a full HTTP client library (the realm's
#: documents are read over http.client).
KEYCLOAK_HEAVY = ("httpx", "requests")

COLD_CALL = """
import json, sys
from obp_workflow.entrypoints.aws_lambda import authorizer as lambda_authorizer
event = {
    "type": "REQUEST",
    "methodArn": "arn:aws:execute-api:eu-north-1:123456789012:abc123/prod/GET/v1/x",
    "headers": {"Authorization": "Bearer " + sys.argv[1]},
}
try:
    answer = lambda_authorizer.handler(event, None)
except Exception as exc:
    assert str(exc) == "Unauthorized", exc
    assert sys.argv[2] == "refused"
else:
    assert sys.argv[2] == "allowed", answer
    assert answer["principalId"] == "cold-user", answer
print(json.dumps(sorted(sys.modules)))
"""


@pytest.fixture(scope="module")
def issuer() -> Iterator[KeycloakIssuer]:
    with KeycloakIssuer() as realm:
        yield realm


def cold_modules(environment: dict[str, str], token: str, outcome: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")} | environment
    out = subprocess.run(
        [sys.executable, "-c", COLD_CALL, token, outcome],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def loaded(modules: set[str], *names: str) -> set[str]:
    return {m for m in modules for n in names if m == n or m.startswith(n + ".")}


@pytest.mark.parametrize("family", ["fake", "aws"])
def test_the_authorizers_first_call_imports_no_heavy_package(
    family: str, issuer: KeycloakIssuer
) -> None:
    if family == "aws":
        environment = {
            "OBP_ADAPTERS": "aws",
            "OBP_KEYCLOAK_ISSUER": issuer.issuer,
            "OBP_KEYCLOAK_AUDIENCES": "workflow",
        }
        token = issuer.mint("cold-user", audience="workflow")
        requests = dict(issuer.requests)
        modules = cold_modules(environment, token, "allowed")
        # The valid token's whole path was taken: discovery, keys, signature.
        assert issuer.requests["discovery"] == requests.get("discovery", 0) + 1
        assert issuer.requests["certs"] == requests.get("certs", 0) + 1
    else:
        modules = cold_modules({"OBP_ADAPTERS": "fake"}, "cold", "refused")  # knows no token

    assert loaded(modules, *HEAVY) == set()
    composition_root = (
        "obp_workflow.entrypoints.composition.root",
        "obp_workflow.entrypoints.composition.settings",
    )
    assert loaded(modules, *composition_root) == set()
    assert (
        "obp_workflow.entrypoints.composition.token_verifier" in modules
    )  # the path under test was taken
    keycloak = loaded(modules, "obp_workflow.adapters.keycloak")
    assert bool(keycloak) == (family == "aws")
    assert loaded(modules, *KEYCLOAK_HEAVY) == set()


def test_the_fake_family_builds_a_verifier_that_knows_no_token() -> None:
    settings = load_token_settings({"OBP_ADAPTERS": "fake"})
    assert settings == TokenSettings(adapters="fake")
    assert isinstance(build_token_verifier(settings), FakeTokenVerifier)


def test_the_local_family_is_the_default_and_trusts_the_local_issuer() -> None:
    settings = load_token_settings({})
    assert settings == TokenSettings(adapters="local")
    verifier = build_token_verifier(settings)
    assert type(verifier).__name__ == "KeycloakTokenVerifier"
    assert verifier._settings.issuer == "http://127.0.0.1:8080/realms/obp"  # type: ignore[attr-defined]


def test_the_aws_family_reads_the_keycloak_settings_as_settings_does() -> None:
    settings = load_token_settings(
        {
            "obp_adapters": "aws",  # names in any case, as pydantic-settings reads them
            "OBP_KEYCLOAK_ISSUER": "https://kc/realms/r",
            "OBP_KEYCLOAK_AUTHORIZED_PARTIES": " web , ,cli",
            "OBP_KEYCLOAK_GROUPS_SOURCE": "userinfo",
            "OBP_RUNS_TABLE": "ignored",
        }
    )

    assert settings == TokenSettings(
        adapters="aws",
        keycloak_issuer="https://kc/realms/r",
        keycloak_authorized_parties=("web", "cli"),
        keycloak_groups_source="userinfo",
    )
    verifier = build_token_verifier(settings)
    assert type(verifier).__name__ == "KeycloakTokenVerifier"


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({"OBP_ADAPTERS": "AWS"}, ["OBP_ADAPTERS: Input should be 'local', 'fake' or 'aws'"]),
        ({"OBP_ADAPTERS": "aws"}, ["required with OBP_ADAPTERS=aws: OBP_KEYCLOAK_ISSUER"]),
        (
            {"OBP_ADAPTERS": "aws", "OBP_KEYCLOAK_ISSUER": "https://kc/realms/r"},
            ["required with OBP_ADAPTERS=aws: OBP_KEYCLOAK_AUDIENCES"],
        ),
        (
            {"OBP_ADAPTERS": "x", "OBP_KEYCLOAK_GROUPS_SOURCE": "claims"},
            [
                "OBP_ADAPTERS: Input should be 'local', 'fake' or 'aws'",
                "OBP_KEYCLOAK_GROUPS_SOURCE: Input should be 'token' or 'userinfo'",
            ],
        ),
    ],
)
def test_every_wrong_token_setting_is_named(
    environment: dict[str, str], expected: list[str]
) -> None:
    with pytest.raises(TokenSettingsError) as error:
        load_token_settings(environment)

    assert str(error.value) == "invalid configuration:\n  " + "\n  ".join(expected)


API_COLD_CALL = """
import json, sys
from obp_workflow.entrypoints.aws_lambda import api as lambda_api
headers = {"Content-Type": "application/json"}
vlab, project = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10", "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20"
path = f"/v1/virtual-labs/{vlab}/projects/{project}/runs"
event = {
    "resource": "/{proxy+}",
    "path": path,
    "httpMethod": "POST",
    "headers": headers,
    "multiValueHeaders": {k: [v] for k, v in headers.items()},
    "requestContext": {
        "authorizer": {
            "subject": "cold-user",
            "username": "cold",
            "memberships": f"/proj/{vlab}/{project}/member",
        },
    },
    "body": json.dumps({"name": "cold", "command": ["true"], "outputs": ["out.h5"]}),
    "isBase64Encoded": False,
}
response = lambda_api.handler(event, None)
assert response["statusCode"] == 202, response
print(json.dumps(sorted(sys.modules)))
"""

#: Never on the API's first call with the in-memory adapters.
API_HEAVY = ("boto3", "botocore.client", "paramiko", "luigi", "httpx", "jwt", "cryptography")


def test_the_apis_first_call_with_fake_adapters_imports_no_production_adapter() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
    env["OBP_ADAPTERS"] = "fake"
    out = subprocess.run(
        [sys.executable, "-c", API_COLD_CALL], env=env, capture_output=True, text=True, check=True
    )
    modules = set(json.loads(out.stdout.strip().splitlines()[-1]))

    assert loaded(modules, *API_HEAVY) == set()
    adapters = loaded(modules, "obp_workflow.adapters")
    families = {m.split(".")[2] for m in adapters if m.count(".") > 1}
    assert families <= {"fake", "system"}
    assert "obp_workflow.entrypoints.composition.root" in modules  # the composition root was built
