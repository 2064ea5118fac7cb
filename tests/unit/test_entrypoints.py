"""The composition root, the settings and the command line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from obp_workflow.adapters.fake.clock import FakeClock
from obp_workflow.application.pipeline import Pipeline
from obp_workflow.application.requests import Requests
from obp_workflow.entrypoints.aws_lambda import api as lambda_api
from obp_workflow.entrypoints.aws_lambda import authorizer as lambda_authorizer
from obp_workflow.entrypoints.composition.aws import provisioner_settings
from obp_workflow.entrypoints.composition.root import build
from obp_workflow.entrypoints.composition.settings import SettingsError, load_settings

ARN = "arn:aws:execute-api:eu-north-1:123456789012:abc123/prod/GET/v1/x"


def test_the_fake_service_is_built_whole_from_default_settings() -> None:
    container = build(load_settings())
    requests, pipeline = container.requests(), container.pipeline()
    assert isinstance(requests, Requests)
    assert isinstance(pipeline, Pipeline)
    assert container.pipeline() is pipeline  # one of each per container
    assert container.requests() is requests
    # The two sides share the repository, the clock and the recorder of changes.
    assert requests.run_repository is pipeline.run_repository
    assert requests.clock is pipeline.clock
    assert requests.recorder is pipeline.recorder
    assert pipeline.policy.max_submit_attempts == 5


def test_a_slot_is_overridden_by_its_ports_name_and_an_unknown_name_is_refused() -> None:
    clock = FakeClock()
    container = build(load_settings(), clock=clock)
    assert container.pipeline().clock is clock
    with pytest.raises(TypeError, match="no such slot: gateway"):
        build(load_settings(), gateway=object())


def test_settings_come_from_obp_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBP_PROVISIONING_TIMEOUT_MINUTES", "90")
    monkeypatch.setenv("OBP_SYNC_MAX_ATTEMPTS", "4")
    service = build(load_settings()).pipeline()
    assert service.policy.provisioning_timeout.total_seconds() == 90 * 60
    assert service.policy.sync_limits.max_attempts == 4


def test_every_wrong_setting_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBP_PROVISIONING_TIMEOUT_MINUTES", "0")
    monkeypatch.setenv("OBP_ADAPTERS", "mainframe")
    monkeypatch.setenv("OBP_MAX_LOG_BYTES", "lots")
    with pytest.raises(SettingsError) as wrong:
        load_settings()
    text = str(wrong.value)
    for name in ("OBP_PROVISIONING_TIMEOUT_MINUTES", "OBP_ADAPTERS", "OBP_MAX_LOG_BYTES"):
        assert name in text


@pytest.mark.parametrize("policy", ["pinned", "accept-new"])
def test_the_host_key_policy_is_read(monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    assert load_settings().host_key_policy == "pinned"
    monkeypatch.setenv("OBP_HOST_KEY_POLICY", policy)
    assert load_settings().host_key_policy == policy


@pytest.mark.parametrize("wrong", ["accept", "no", "ACCEPT-NEW", ""])
def test_an_unknown_host_key_policy_is_named(monkeypatch: pytest.MonkeyPatch, wrong: str) -> None:
    monkeypatch.setenv("OBP_HOST_KEY_POLICY", wrong)
    with pytest.raises(SettingsError, match="OBP_HOST_KEY_POLICY"):
        load_settings()


def test_the_aws_adapters_need_their_settings_each_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBP_ADAPTERS", "aws")
    monkeypatch.setenv("OBP_RUNS_TABLE", "runs")
    with pytest.raises(SettingsError) as wrong:
        load_settings()
    text = str(wrong.value)
    for name in (
        "OBP_ECS_CLUSTER",
        "OBP_ECS_TASK_DEFINITION",
        "OBP_ECS_CONTAINER_NAME",
        "OBP_ECS_SUBNETS",
        "OBP_PROVISIONER_URL",
        "OBP_LUSTRE_BUCKET",
        "OBP_KEYCLOAK_ISSUER",
    ):
        assert name in text
    assert "OBP_RUNS_TABLE" not in text


@pytest.fixture
def service_logger() -> Iterator[logging.Logger]:
    """The service's logger, its level restored after the test (with ``setLevel``, which also
    clears the loggers' caches of what is enabled)."""
    logger = logging.getLogger("obp_workflow")
    before = logger.level
    try:
        yield logger
    finally:
        logger.setLevel(before)


@pytest.mark.parametrize("level", ["DEBUG", "WARNING"])
def test_the_log_level_setting_is_applied_by_each_lambda(
    level: str, monkeypatch: pytest.MonkeyPatch, service_logger: logging.Logger
) -> None:
    service_logger.setLevel(logging.NOTSET)
    monkeypatch.setenv("OBP_LOG_LEVEL", level)
    lambda_authorizer.use_container(None)
    lambda_api.use_container(None)
    try:
        with pytest.raises(Exception, match="Unauthorized"):  # the fake family knows no token
            lambda_authorizer.handler(
                {"type": "TOKEN", "authorizationToken": "Bearer x", "methodArn": ARN}, None
            )
        assert service_logger.level == logging.getLevelName(level)

        service_logger.setLevel(logging.NOTSET)
        vlab, project = (
            "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10",
            "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20",
        )
        caller = {"subject": "s", "username": "u", "memberships": f"/proj/{vlab}/{project}/member"}
        answer = lambda_api.handler(
            {
                "httpMethod": "GET",
                "path": f"/v1/virtual-labs/{vlab}/projects/{project}/instance",
                "requestContext": {"authorizer": caller},
            },
            None,
        )
        assert answer["statusCode"] == 200  # the container was built from the settings
        assert service_logger.level == logging.getLevelName(level)
    finally:
        lambda_authorizer.use_container(None)
        lambda_api.use_container(None)


def test_building_a_container_leaves_the_log_level_alone(
    monkeypatch: pytest.MonkeyPatch, service_logger: logging.Logger
) -> None:
    service_logger.setLevel(logging.DEBUG)
    monkeypatch.setenv("OBP_LOG_LEVEL", "ERROR")
    build(load_settings())
    assert service_logger.level == logging.DEBUG


def test_the_cluster_settings_reach_the_provisioners_reading_of_its_clusters() -> None:
    settings = load_settings(
        lustre_bucket="nexus-data",
        provisioner_address="public",
        provisioner_ssh_port=2222,
        provisioner_ssh_user="obpsim",
        provisioner_admin_user="",
        user_key_secret_template="{vlab_id}/{cluster_name}/user",
        admin_key_secret_template="",
        cluster_partition="debug",
        lustre_mount="/lustre",
        lustre_dra_path="/data",
        lustre_runs_root="{dra_root}/{project_id}",
        shared_path="/home",
        shared_runs_root="{shared_path}/{ssh_user}/obp",
    )
    read = provisioner_settings(settings)
    assert (read.address, read.ssh_port, read.ssh_user) == ("public", 2222, "obpsim")
    assert read.admin_user is None  # empty: the simulation user
    assert read.user_key_template == "{vlab_id}/{cluster_name}/user"
    assert read.admin_key_template is None  # empty: unknown until a provisioner answer
    assert read.partition == "debug"
    assert (read.lustre_mount, read.lustre_dra_path) == ("/lustre", "/data")
    assert read.lustre_runs_root == "{dra_root}/{project_id}"
    assert (read.shared_path, read.shared_runs_root) == ("/home", "{shared_path}/{ssh_user}/obp")
    defaults = provisioner_settings(load_settings(lustre_bucket="b"))
    assert (defaults.ssh_user, defaults.admin_user, defaults.ssh_port) == ("sim", "ec2-user", 22)
    assert defaults.lustre_runs_root == "{dra_root}/{vlab_id}/{project_id}/runs"


def test_wrong_cluster_settings_are_named_each_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wrong = {
        "OBP_PROVISIONER_ADDRESS": "elastic",
        "OBP_PROVISIONER_SSH_PORT": "70000",
        "OBP_PROVISIONER_SSH_USER": "Sim User",
        "OBP_USER_KEY_SECRET_TEMPLATE": "{cluster}_sim",
        "OBP_CLUSTER_PARTITION": "debug;rm",
        "OBP_LUSTRE_MOUNT": "obi/data",
        "OBP_LUSTRE_RUNS_ROOT": "{dra_root}/../{project_id}",
        "OBP_SHARED_RUNS_ROOT": "{shared_path}/{user}/runs",
        "OBP_HOST_KEY_SECRET_TEMPLATE": "{project_id}-host-key",
    }
    for name, value in wrong.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    lines = str(caught.value).splitlines()[1:]
    assert sorted(line.strip().split(":", 1)[0] for line in lines) == sorted(wrong)
    problems = {line.strip().split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines}
    assert "{cluster_name}, {vlab_id}, {project_id}" in problems["OBP_USER_KEY_SECRET_TEMPLATE"]
    assert problems["OBP_LUSTRE_RUNS_ROOT"].startswith("must be an absolute path")
    assert "{ssh_user}" in problems["OBP_SHARED_RUNS_ROOT"]
