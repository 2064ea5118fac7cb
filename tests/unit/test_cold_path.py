"""The Lambda authorizer's cold path: what a fresh interpreter imports for one invocation.

A structural check (which packages are loaded), not a timing: the authorizer builds only its
token verifier (``entrypoints.tokens``), never the composition root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from obp_workflow.adapters.fake.simple import StaticTokenVerifier
from obp_workflow.entrypoints.tokens import (
    TokenSettings,
    TokenSettingsError,
    build_token_verifier,
    load_token_settings,
)

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

COLD_CALL = """
import json, sys
from obp_workflow.entrypoints import lambda_authorizer
event = {
    "type": "REQUEST",
    "methodArn": "arn:aws:execute-api:eu-north-1:123456789012:abc123/prod/GET/v1/x",
    "headers": {"Authorization": "Bearer cold"},
}
try:
    lambda_authorizer.handler(event, None)
except Exception as exc:
    assert str(exc) == "Unauthorized", exc
else:
    raise AssertionError("an unknown token was accepted")
print(json.dumps(sorted(sys.modules)))
"""

AWS = {
    "OBP_ADAPTERS": "aws",
    "OBP_KEYCLOAK_ISSUER": "https://keycloak.example/realms/obp",
    "OBP_KEYCLOAK_AUDIENCES": "workflow",
}


def cold_modules(environment: dict[str, str]) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")} | environment
    out = subprocess.run(
        [sys.executable, "-c", COLD_CALL], env=env, capture_output=True, text=True, check=True
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def loaded(modules: set[str], *names: str) -> set[str]:
    return {m for m in modules for n in names if m == n or m.startswith(n + ".")}


@pytest.mark.parametrize("environment", [{}, AWS], ids=["fake", "aws"])
def test_the_authorizers_first_call_imports_no_heavy_package(environment: dict[str, str]) -> None:
    modules = cold_modules(environment)

    assert loaded(modules, *HEAVY) == set()
    composition_root = ("obp_workflow.entrypoints.bootstrap", "obp_workflow.entrypoints.settings")
    assert loaded(modules, *composition_root) == set()
    assert "obp_workflow.entrypoints.tokens" in modules  # the path under test was taken
    keycloak = loaded(modules, "obp_workflow.adapters.keycloak")
    assert bool(keycloak) == (environment == AWS)


def test_the_fake_family_builds_a_verifier_that_knows_no_token() -> None:
    assert load_token_settings({}) == TokenSettings()
    assert isinstance(build_token_verifier(TokenSettings()), StaticTokenVerifier)


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
        ({"OBP_ADAPTERS": "AWS"}, ["OBP_ADAPTERS: Input should be 'fake' or 'aws'"]),
        ({"OBP_ADAPTERS": "aws"}, ["required with OBP_ADAPTERS=aws: OBP_KEYCLOAK_ISSUER"]),
        (
            {"OBP_ADAPTERS": "aws", "OBP_KEYCLOAK_ISSUER": "https://kc/realms/r"},
            ["required with OBP_ADAPTERS=aws: OBP_KEYCLOAK_AUDIENCES"],
        ),
        (
            {"OBP_ADAPTERS": "x", "OBP_KEYCLOAK_GROUPS_SOURCE": "claims"},
            [
                "OBP_ADAPTERS: Input should be 'fake' or 'aws'",
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
