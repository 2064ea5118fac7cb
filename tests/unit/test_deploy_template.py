"""deploy/template.yaml against the code it deploys: the runs table is ``table_schema()``, the
gateway responses are the local gateway's, the authorizer is a cached REQUEST authorizer on the
Authorization header, the handlers exist, the public paths are the API's, every environment
variable is a documented setting and the environments load, and no IAM wildcard goes
unjustified (with the checker itself tried on bad templates)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from obp_workflow.adapters.aws.dynamodb import table_schema
from obp_workflow.entrypoints.composition.settings import Settings, load_settings
from obp_workflow.entrypoints.composition.token_verifier import load_token_settings
from obp_workflow.entrypoints.http.api import public_path
from obp_workflow.entrypoints.http.models import PROBLEM_JSON
from obp_workflow.entrypoints.local import events, limits
from tests.deploy_template import REPO, Resolver, load, load_text, star_violations

TEMPLATE = load()
RESOURCES = TEMPLATE["Resources"]

#: Parameters as an operator would give them.
PARAMETERS: dict[str, str | list[str]] = {
    "ImageUri": "123456789012.dkr.ecr.eu-north-1.amazonaws.com/obp-workflow:0.1.0",
    "SubnetIds": ["subnet-0a1b2c3d", "subnet-4e5f6a7b"],
    "SecurityGroupIds": ["sg-0123456789abcdef0"],
    "ProvisionerUrl": "https://prov.example.org/prod",
    "ProvisionerApiArn": (
        "arn:aws:execute-api:eu-north-1:123456789012:abc123/prod/*/hpc-provisioner/*"
    ),
    "LustreBucket": "nexus-data",
    "LustrePrefix": "project-data",
    "HsmJobsRoot": "/home/ec2-user/obp-sync",
    "ClusterSecretPrefix": "pcluster-",
    "ServiceClientSecretName": "obp-workflow/keycloak-client",
    "KeycloakIssuer": "https://sso.example.org/auth/realms/SBO",
    "KeycloakAudiences": "workflow",
    "ServiceClientId": "obp-workflow",
    "NexusEndpoint": "https://nexus.example.org/api/nexus/v1",
}
REFS = {"RunsTable": "obp-RunsTable-X1", "WorkflowCluster": "obp-WorkflowCluster-Y2"}
REFS["WorkerTaskDefinition"] = "arn:aws:ecs:eu-north-1:123456789012:task-definition/obp-worker:3"


def resolver(**parameters: str | list[str]) -> Resolver:
    return Resolver(TEMPLATE, {**PARAMETERS, **parameters}, refs=REFS)


# ================================================================ the runs table


def test_the_runs_table_is_table_schema() -> None:
    table = RESOURCES["RunsTable"]["Properties"]
    schema = table_schema("ignored")
    assert table["BillingMode"] == schema["BillingMode"]
    assert table["KeySchema"] == schema["KeySchema"]

    def by_name(items: Any) -> list[tuple[str, str]]:
        return sorted((a["AttributeName"], a["AttributeType"]) for a in items)

    assert by_name(table["AttributeDefinitions"]) == by_name(schema["AttributeDefinitions"])

    def indexes(items: Any) -> dict[str, Any]:
        return {
            i["IndexName"]: (
                [dict(k) for k in i["KeySchema"]],
                i["Projection"]["ProjectionType"],
                sorted(i["Projection"].get("NonKeyAttributes", [])),
            )
            for i in items
        }

    assert indexes(table["GlobalSecondaryIndexes"]) == indexes(schema["GlobalSecondaryIndexes"])
    assert RESOURCES["RunsTable"]["DeletionPolicy"] == "Retain"


# ================================================================ the API


def test_the_gateway_responses_are_the_local_gateways_problems() -> None:
    responses = RESOURCES["Api"]["Properties"]["GatewayResponses"]
    expected = {
        "UNAUTHORIZED": events.UNAUTHORIZED,
        "ACCESS_DENIED": events.ACCESS_DENIED,
        "REQUEST_TOO_LARGE": limits.REQUEST_TOO_LARGE,
        "AUTHORIZER_FAILURE": events.AUTHORIZER_FAILURE,
        "AUTHORIZER_CONFIGURATION_ERROR": events.AUTHORIZER_FAILURE,
    }
    assert set(responses) == set(expected)
    for name, problem in expected.items():
        response = responses[name]
        assert response["StatusCode"] == problem.status, name
        assert response["ResponseParameters"]["Headers"] == {"Content-Type": f"'{PROBLEM_JSON}'"}
        body = json.loads(response["ResponseTemplates"]["application/json"])
        assert body == json.loads(problem.model_dump_json(exclude_none=True)), name


def test_the_authorizer_is_a_cached_request_authorizer_on_the_authorization_header() -> None:
    auth = RESOURCES["Api"]["Properties"]["Auth"]
    authorizer = auth["Authorizers"][auth["DefaultAuthorizer"]]
    assert authorizer["FunctionPayloadType"] == "REQUEST"
    assert authorizer["FunctionArn"] == {"Fn::GetAtt": ["AuthorizerFunction", "Arn"]}
    assert authorizer["Identity"]["Headers"] == ["Authorization"]
    assert authorizer["Identity"]["ReauthorizeEvery"] == {"Ref": "AuthorizerCacheTtl"}
    ttl = TEMPLATE["Parameters"]["AuthorizerCacheTtl"]
    assert (ttl["Type"], ttl["Default"], ttl["MaxValue"]) == ("Number", 300, 3600)


@pytest.mark.parametrize("function", ["ApiFunction", "AuthorizerFunction"])
def test_each_handler_is_a_function_of_the_package(function: str) -> None:
    handler = RESOURCES[function]["Properties"]["Handler"]
    module, _, name = handler.rpartition(".")
    assert module.startswith("obp_workflow.entrypoints.aws_lambda.")
    assert callable(getattr(importlib.import_module(module), name))
    assert TEMPLATE["Globals"]["Function"]["Runtime"] == "python3.12"


def test_the_paths_without_authorizer_are_the_apis_public_paths() -> None:
    events = RESOURCES["ApiFunction"]["Properties"]["Events"]
    open_paths = {
        e["Properties"]["Path"]
        for e in events.values()
        if e["Properties"].get("Auth", {}).get("Authorizer") == "NONE"
    }
    documented = json.loads((REPO / "docs" / "openapi.json").read_text())["paths"]
    sample = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
    public = {p for p in documented if public_path(re.sub(r"\{\w+\}", sample, p))}
    assert public, "the API has public paths (health, the document)"
    assert open_paths == public
    assert all(e["Properties"]["Method"] == "ANY" for e in events.values())
    proxy = [e for e in events.values() if e["Properties"]["Path"] == "/{proxy+}"]
    assert len(proxy) == 1
    assert "Auth" not in proxy[0]["Properties"]  # the default authorizer


# ================================================================ environments


def _environments() -> dict[str, dict[str, Any]]:
    worker = RESOURCES["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
    names: dict[str, Any] = {}
    for entry in worker["Environment"]:
        for branch in entry["Fn::If"][1:2] if "Fn::If" in entry else [entry]:
            names[branch["Name"]] = branch["Value"]
    return {
        "api": RESOURCES["ApiFunction"]["Properties"]["Environment"]["Variables"],
        "authorizer": RESOURCES["AuthorizerFunction"]["Properties"]["Environment"]["Variables"],
        "worker": names,
    }


def documented_in_readme() -> set[str]:
    readme = (REPO / "README.md").read_text()
    return set(re.findall(r"^\| `(OBP_[A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))


@pytest.mark.parametrize("piece", ["api", "authorizer", "worker"])
def test_every_environment_variable_is_a_documented_setting(piece: str) -> None:
    settings = {"OBP_" + name.upper() for name in Settings.model_fields}
    variables = set(_environments()[piece])
    assert variables <= settings, variables - settings
    assert variables <= documented_in_readme(), variables - documented_in_readme()
    # The orchestrator sets the project on each task; the template never does.
    assert not variables & {"OBP_VIRTUAL_LAB_ID", "OBP_PROJECT_ID"}
    # Secrets travel as references, never as values.
    assert not any(re.search(r"SECRET(?!_ID)|TOKEN|PASSWORD|KEY$", v) for v in variables)


def _resolved(piece: str, resolve: Resolver) -> dict[str, str]:
    if piece == "worker":
        container = RESOURCES["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"][0]
        return {e["Name"]: e["Value"] for e in resolve.resolve(container["Environment"])}
    function = "ApiFunction" if piece == "api" else "AuthorizerFunction"
    return resolve.resolve(RESOURCES[function]["Properties"]["Environment"]["Variables"])


@pytest.mark.parametrize("piece", ["api", "worker"])
@pytest.mark.parametrize("tier", ["", "debug"])
def test_the_api_and_worker_environments_load_as_aws_settings(piece: str, tier: str) -> None:
    resolve = resolver(ProvisionerTier=tier)
    assert resolve.missing() == []  # every parameter is given or has a default
    env = _resolved(piece, resolve)
    settings = load_settings(**{k.removeprefix("OBP_").lower(): v for k, v in env.items()})
    assert settings.adapters == "aws"
    assert settings.aws_region == "eu-north-1"
    assert settings.provisioner_tier == (tier or None)
    assert settings.split(settings.ecs_subnets) == tuple(PARAMETERS["SubnetIds"])
    assert settings.ecs_container_name == "worker"
    assert settings.lustre_prefix == "project-data"
    if piece == "worker":
        assert settings.luigid_port == 8082
        assert settings.ecs_task_definition == "obp-worker"  # the family: its latest revision


def test_the_api_and_the_worker_start_the_same_task_in_the_same_cluster() -> None:
    api, worker = (_resolved(p, resolver()) for p in ("api", "worker"))
    task = RESOURCES["WorkerTaskDefinition"]["Properties"]
    family = resolver().resolve(task["Family"])
    assert api["OBP_ECS_TASK_DEFINITION"].rsplit("/", 1)[1].split(":")[0] == family
    assert worker["OBP_ECS_TASK_DEFINITION"] == family
    for name in ("OBP_ECS_CLUSTER", "OBP_ECS_SUBNETS", "OBP_ECS_SECURITY_GROUPS", "OBP_RUNS_TABLE"):
        assert api[name] == worker[name], name
    assert api["OBP_ECS_CONTAINER_NAME"] == task["ContainerDefinitions"][0]["Name"]


def test_the_authorizer_environment_loads_its_token_settings() -> None:
    settings = load_token_settings(_resolved("authorizer", resolver()))
    assert settings.adapters == "aws"
    assert settings.keycloak_issuer == PARAMETERS["KeycloakIssuer"]
    assert settings.keycloak_audiences == ("workflow",)


# ================================================================ IAM


def test_every_iam_wildcard_of_the_template_is_justified() -> None:
    assert star_violations() == []


def test_the_authorizer_may_only_write_its_logs() -> None:
    policies = RESOURCES["AuthorizerRole"]["Properties"]["Policies"]
    actions = {
        a
        for p in policies
        for s in p["PolicyDocument"]["Statement"]
        for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    }
    assert actions == {"logs:CreateLogStream", "logs:PutLogEvents"}
    assert "VpcConfig" not in RESOURCES["AuthorizerFunction"]["Properties"]


def test_every_ecs_task_action_is_held_to_the_workflow_cluster() -> None:
    cluster_arn = {"Fn::GetAtt": ["WorkflowCluster", "Arn"]}
    documents = [p["PolicyDocument"] for p in RESOURCES["ApiRole"]["Properties"]["Policies"]] + [
        RESOURCES["WorkerTaskPolicy"]["Properties"]["PolicyDocument"]
    ]
    seen = set()
    for document in documents:
        for statement in document["Statement"]:
            actions = (
                statement["Action"]
                if isinstance(statement["Action"], list)
                else [statement["Action"]]
            )
            for action in actions:
                seen.add(action)
                if action in ("ecs:RunTask", "ecs:ListTasks", "ecs:DescribeTasks", "ecs:StopTask"):
                    assert statement["Condition"] == {"ArnEquals": {"ecs:cluster": cluster_arn}}
                if action == "iam:PassRole":
                    assert statement["Resource"] == [
                        {"Fn::GetAtt": ["WorkerTaskRole", "Arn"]},
                        {"Fn::GetAtt": ["WorkerExecutionRole", "Arn"]},
                    ]
                    assert statement["Condition"] == {
                        "StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}
                    }
    assert {"ecs:RunTask", "ecs:ListTasks", "ecs:StopTask", "iam:PassRole"} <= seen


BAD = """\
Resources:
  Role:
    Type: AWS::IAM::Role
    Properties:
      AssumeRolePolicyDocument: {{}}
      Policies:
        - PolicyName: p
          PolicyDocument:
            Statement:
{statements}
"""


@pytest.mark.parametrize(
    ("statements", "complaint"),
    [
        ("              - {Effect: Allow, Action: 's3:*', Resource: arn:aws:s3:::b/*}", "s3:*"),
        ("              - {Effect: Allow, Action: s3:GetObject, Resource: '*'}", "Resource '*'"),
        (
            "              # star:\n"  # no reason given
            "              - {Effect: Allow, Action: s3:GetObject, Resource: '*'}",
            "Resource '*'",
        ),
        (
            "              # star: a reason, but two lines above\n\n"
            "              - {Effect: Allow, Action: s3:GetObject, Resource: '*'}",
            "Resource '*'",
        ),
        (
            "              - !If [C, {Effect: Allow, Action: ec2:Describe*, Resource: x}, "
            "!Ref AWS::NoValue]",
            "ec2:Describe*",
        ),
        ("              - {Effect: Allow, NotAction: s3:GetObject, Resource: x}", "NotAction"),
    ],
    ids=[
        "star-action",
        "star-resource",
        "empty-reason",
        "reason-too-far",
        "star-in-a-condition-branch",
        "not-action",
    ],
)
def test_the_wildcard_check_fails_on_a_bad_template(
    tmp_path: Path, statements: str, complaint: str
) -> None:
    load_text(BAD.format(statements=statements), tmp_path)  # valid YAML for the loader
    problems = star_violations(tmp_path / "template.yaml")
    assert len(problems) == 1, problems
    assert complaint in problems[0]


@pytest.mark.parametrize(
    "statements",
    [
        "              - {Effect: Allow, Action: s3:GetObject, Resource: '*'}  # star: why",
        "              # star: why\n"
        "              - {Effect: Allow, Action: s3:GetObject, Resource: '*'}",
        "              - {Effect: Allow, Action: s3:GetObject, Resource: 'arn:aws:s3:::b/p/*'}",
    ],
    ids=["same-line", "line-above", "scoped-resource"],
)
def test_the_wildcard_check_passes_a_justified_or_scoped_statement(
    tmp_path: Path, statements: str
) -> None:
    load_text(BAD.format(statements=statements), tmp_path)
    assert star_violations(tmp_path / "template.yaml") == []


def test_managed_policies_and_generated_roles_are_refused(tmp_path: Path) -> None:
    text = """\
Resources:
  Role:
    Type: AWS::IAM::Role
    Properties:
      AssumeRolePolicyDocument: {}
      ManagedPolicyArns: [arn:aws:iam::aws:policy/AdministratorAccess]
  Function:
    Type: AWS::Serverless::Function
    Properties: {Handler: x.y}
"""
    load_text(text, tmp_path)
    problems = star_violations(tmp_path / "template.yaml")
    assert len(problems) == 2
    assert "managed policies" in problems[0]
    assert "no Role" in problems[1]
