"""The workflow container as deploy/Dockerfile and deploy/template.yaml describe it.

No container engine can build the image here (no daemon, and no registry to pull the base image
from), so this runs what the image runs: the Dockerfile's ENTRYPOINT, with the environment of the
template's task definition (resolved for a deployment whose AWS is a moto server) plus the
project RunTask adds, and the Dockerfile's HEALTHCHECK command against it. The health check
fails before the worker starts and after it stops, and passes while it runs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from obp_workflow.adapters.aws.dynamodb import create_table
from obp_workflow.entrypoints.composition.settings import Settings
from tests.deploy_template import DOCKERFILE, REPO, Resolver, load
from tests.moto_server import CREDENTIALS, REGION, MotoServer

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20"
TABLE = "obp-deploy-image-runs"


# ================================================================ the Dockerfile, read


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def exec_form(arguments: str) -> list[str]:
    form = json.loads(arguments)
    assert isinstance(form, list), f"not the exec (JSON) form: {arguments}"
    return [str(a) for a in form]


def entrypoint() -> list[str]:
    (args,) = [a for i, a in instructions() if i == "ENTRYPOINT"]
    return exec_form(args)


def healthcheck() -> list[str]:
    (args,) = [a for i, a in instructions() if i == "HEALTHCHECK"]
    return exec_form(args.split(" CMD ", 1)[1])


def context_copies() -> list[list[str]]:
    """The arguments of each COPY from the build context (not from a stage)."""
    copies = []
    for word, args in instructions():
        parts = shlex.split(args)
        if word == "COPY" and not any(p.startswith("--from") for p in parts):
            copies.append(parts)
    return copies


def copied() -> dict[str, str]:
    """Destination in the image -> source in the build context, of single-file COPYs."""
    return {parts[-1]: parts[0] for parts in context_copies() if len(parts) == 2}


def task_container() -> dict[str, Any]:
    definition = load()["Resources"]["WorkerTaskDefinition"]["Properties"]
    container: dict[str, Any] = definition["ContainerDefinitions"][0]
    return container


def test_the_image_is_a_pinned_multi_stage_build_run_by_a_non_root_user() -> None:
    steps = instructions()
    froms = [a for i, a in steps if i == "FROM"]
    assert len(froms) >= 2  # a build stage, then the image
    (base,) = {a for i, a in steps if i == "ARG" and a.startswith("PYTHON_IMAGE=")}
    image = base.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.12\.\d+-slim-\w+", image), image
    users = [a for i, a in steps if i == "USER"]
    assert users, "the image names its user"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert steps[-1][0] == "ENTRYPOINT"
    # The wheel without extras: no dev dependency in the image.
    assert not any("[dev]" in a for _, a in steps)


def test_the_task_definition_runs_the_images_entrypoint_and_health_check() -> None:
    container = task_container()
    assert entrypoint() == ["obp-workflow", "worker"]
    assert container["EntryPoint"] == entrypoint()
    assert "Command" not in container  # arguments would follow the ENTRYPOINT
    assert container["HealthCheck"]["Command"] == ["CMD", *healthcheck()]
    exposed = [int(a) for i, a in instructions() if i == "EXPOSE"]
    ports = {e["Name"]: e["Value"] for e in container["Environment"] if "Name" in e}
    default = Settings.model_fields["luigid_port"].default
    assert exposed == [default] == [int(ports["OBP_LUIGID_PORT"])]


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"  # everything is left out but what is named after it
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for parts in context_copies():
        for source in parts[:-1]:
            assert (REPO / source).exists(), source
            assert source.rstrip("/").removeprefix("./") in kept, source
    assert {"pyproject.toml", "src"} <= kept


# ================================================================ what the image runs


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _in_this_checkout(argv: list[str]) -> list[str]:
    """``argv`` of the image run here: programs from this venv, files from the build context."""
    venv_bin = str(Path(sys.executable).parent)
    program = sys.executable if argv[0] == "python" else shutil.which(argv[0], path=venv_bin)
    assert program, f"{argv[0]} is not installed in {venv_bin}"
    sources = copied()
    return [program, *(str(REPO / sources[a]) if a in sources else a for a in argv[1:])]


def health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _in_this_checkout(healthcheck()),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture
def task_environment(moto: MotoServer) -> dict[str, str]:
    """The environment ECS gives the worker's container: the task definition's, resolved for a
    deployment on moto, the project of the RunTask, and a free luigid port (the machine is
    shared)."""
    client = boto3.client("dynamodb", endpoint_url=moto.endpoint, region_name=REGION)
    create_table(client, TABLE)
    template = load()
    resolve = Resolver(
        template,
        {
            "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/obp-workflow:test",
            "SubnetIds": ["subnet-0a1b2c3d"],
            "SecurityGroupIds": ["sg-0123456789abcdef0"],
            "ProvisionerUrl": "https://provisioner.invalid/prod",
            "ProvisionerApiArn": "arn:aws:execute-api:us-east-1:123456789012:abc/prod/*",
            "LustreBucket": "nexus-data",
            "HsmJobsRoot": "/home/ec2-user/obp-sync",
            "ClusterSecretPrefix": "pcluster-",
            "ServiceClientSecretName": "obp-workflow/keycloak-client",
            "KeycloakIssuer": "https://sso.invalid/realms/SBO",
            "KeycloakAudiences": "workflow",
            "ServiceClientId": "obp-workflow",
            "NexusEndpoint": "https://nexus.invalid/v1",
        },
        refs={"RunsTable": TABLE, "WorkflowCluster": "obp-workflow"},
        region=REGION,
    )
    environment = {e["Name"]: e["Value"] for e in resolve.resolve(task_container()["Environment"])}
    base = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
    return {
        **base,
        **CREDENTIALS,  # the task role's credentials
        **environment,
        "OBP_VIRTUAL_LAB_ID": VLAB,
        "OBP_PROJECT_ID": PROJECT,
        "OBP_AWS_ENDPOINT_URL": moto.endpoint,
        "OBP_LUIGID_PORT": str(_free_port()),
    }


def test_the_entrypoint_with_the_tasks_environment_is_healthy_until_sigterm(
    task_environment: dict[str, str], tmp_path: Path
) -> None:
    before = health(task_environment)
    assert before.returncode == 1, before
    assert "unhealthy" in before.stderr
    log = tmp_path / "worker.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            _in_this_checkout(entrypoint()),
            env=task_environment,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    try:
        deadline = time.monotonic() + 60
        answer = health(task_environment)
        while answer.returncode != 0 and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-2000:]
            time.sleep(0.5)
            answer = health(task_environment)
        assert answer.returncode == 0, answer.stderr + log.read_text()[-2000:]
        time.sleep(2.5)  # a few polls of its project's runs in the table
        assert process.poll() is None, log.read_text()[-2000:]
        process.send_signal(signal.SIGTERM)  # what ECS sends to stop the task
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    after = health(task_environment)
    assert after.returncode == 1, after
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert lines, "the worker logs JSON lines"
    assert all(line["level"] not in ("ERROR", "CRITICAL") for line in lines), lines
    assert any(line.get("project") == f"{VLAB}/{PROJECT}" for line in lines)
