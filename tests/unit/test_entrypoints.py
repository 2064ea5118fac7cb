"""The composition root, the settings and the command line."""

from __future__ import annotations

import pytest

from obp_workflow.application.service import WorkflowService
from obp_workflow.entrypoints.bootstrap import build
from obp_workflow.entrypoints.cli import main
from obp_workflow.entrypoints.settings import SettingsError, load_settings


def test_the_fake_service_is_built_whole_from_default_settings() -> None:
    container = build(load_settings())
    service = container.workflow()
    assert isinstance(service, WorkflowService)
    assert container.workflow() is service  # one service per container
    assert service.policy.max_submit_attempts == 5


def test_settings_come_from_obp_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBP_PROVISIONING_TIMEOUT_MINUTES", "90")
    monkeypatch.setenv("OBP_SYNC_MAX_ATTEMPTS", "4")
    service = build(load_settings()).workflow()
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


@pytest.mark.parametrize("flags", [[], ["--no-lustre"]], ids=["lustre", "direct-upload"])
def test_the_demo_drives_one_simulation_to_done(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", *flags]) == 0
    out = capsys.readouterr().out
    path = "ACCEPTED -> PROVISIONING -> SUBMITTING -> QUEUED -> RUNNING -> SYNCING -> REGISTERING"
    assert f"{path} -> DONE" in out
    assert ("lustre-hsm" in out) == (flags == [])
    assert ("3 outputs linked as files of the graph" in out) == (flags == [])


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
