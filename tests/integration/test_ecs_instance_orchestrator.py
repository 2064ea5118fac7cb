"""EcsInstanceOrchestrator beyond the InstanceOrchestrator contract: what it sends to ECS, how it
reads ECS's answers, and one start per project across processes (moto + ``EcsTokenProxy``)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from obp_workflow.adapters.aws.ecs import EcsInstanceOrchestrator, EcsTaskConfig
from obp_workflow.core.errors import ServiceUnavailable
from obp_workflow.ports.instances import InstanceInfo
from tests.contract.harness import PROJECT_A, PROJECT_B
from tests.contract.harness_aws import CLUSTER, EcsInstanceOrchestratorHarness, aws_client

SECRET_LIKE = re.compile(r"SECRET|TOKEN|PASSW|PRIVATE|CREDENTIAL|KEY", re.IGNORECASE)


@pytest.fixture
def ecs() -> Iterator[EcsInstanceOrchestratorHarness]:
    harness = EcsInstanceOrchestratorHarness()
    try:
        yield harness
    finally:
        harness.close()


def together(*calls: Callable[[], InstanceInfo]) -> list[InstanceInfo]:
    """Run the calls in threads released at the same moment; their results, in order."""
    barrier = threading.Barrier(len(calls))
    results: list[InstanceInfo | None] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


# ---------------------------------------------------------------- what is sent


def test_the_task_is_started_by_the_project_with_its_environment_and_no_secret(
    ecs: EcsInstanceOrchestratorHarness,
) -> None:
    info = ecs.orchestrator.ensure(PROJECT_A)
    assert len(PROJECT_A.key) == 73
    assert re.fullmatch(r"[A-Za-z0-9/_-]{1,128}", PROJECT_A.key)
    (task,) = ecs.tasks(PROJECT_A.key)
    assert task["taskArn"] == info.instance_id
    assert task["startedBy"] == PROJECT_A.key
    assert task["launchType"] == "FARGATE"
    (override,) = task["overrides"]["containerOverrides"]
    assert override["name"] == "workflow"
    env = {e["name"]: e["value"] for e in override["environment"]}
    assert env == {
        "OBP_VIRTUAL_LAB_ID": PROJECT_A.virtual_lab_id,
        "OBP_PROJECT_ID": PROJECT_A.project_id,
        "OBP_LOG_LEVEL": "INFO",
    }
    assert not [name for name in env if SECRET_LIKE.search(name)]


def test_the_task_carries_the_cost_centre_tags(ecs: EcsInstanceOrchestratorHarness) -> None:
    ecs.orchestrator.ensure(PROJECT_B)
    (task,) = ecs.tasks(PROJECT_B.key)
    tags = {t["key"]: t["value"] for t in task["tags"]}
    assert tags == {
        "obp:costcenter:vlabid": PROJECT_B.virtual_lab_id,
        "obp:costcenter:project": PROJECT_B.project_id,
        "obp:costcenter:service": "workflow",
    }


@pytest.mark.parametrize(
    ("environment", "refused"),
    [
        ({"NEXUS_TOKEN": "x"}, "looks like a secret"),
        ({"SSH_PRIVATE_KEY": "x"}, "looks like a secret"),
        ({"DB_PASSWORD": "x"}, "looks like a secret"),
        ({"OBP_PROJECT_ID": "x"}, "set by the orchestrator"),
        ({"1BAD": "x"}, "not a valid variable name"),
    ],
)
def test_configuration_refuses_secret_like_or_reserved_environment(
    environment: dict[str, str], refused: str
) -> None:
    with pytest.raises(ValueError, match=refused):
        EcsTaskConfig(
            cluster="c",
            task_definition="td",
            container_name="w",
            subnets=["subnet-1"],
            extra_environment=environment,
        )


def test_client_tokens_are_deterministic_distinct_and_valid(
    ecs: EcsInstanceOrchestratorHarness,
) -> None:
    one = ecs.another_orchestrator()
    other = ecs.another_orchestrator()
    window = int(time.time() // 900)
    tokens = {
        one.client_token(project, w, g)
        for project in (PROJECT_A, PROJECT_B)
        for w in (window, window + 1)
        for g in (0, 1)
    }
    assert len(tokens) == 8
    assert one.client_token(PROJECT_A, window, 0) == other.client_token(PROJECT_A, window, 0)
    for token in tokens:
        assert len(token) <= 64
        assert all(33 <= ord(c) <= 126 for c in token)


# ---------------------------------------------------------------- how answers are read


def test_a_run_task_answered_with_failures_is_an_error_naming_the_reason(
    ecs: EcsInstanceOrchestratorHarness,
) -> None:
    now = time.time()
    orchestrator = ecs.another_orchestrator(wall_clock=lambda: now)
    ecs.proxy.fail_next_run_task("RESOURCE:MEMORY")
    with pytest.raises(ServiceUnavailable) as caught:
        orchestrator.ensure(PROJECT_A)
    assert "RESOURCE:MEMORY" in str(caught.value)
    assert PROJECT_A.key in str(caught.value)
    assert ecs.starts() == 0
    assert orchestrator.describe(PROJECT_A) is None
    assert orchestrator.ensure(PROJECT_A).live  # the next attempt starts it
    assert ecs.starts() == 1
    # ...with the window's next token, in case ECS repeats the failure for the first one.
    window = int(now // 900)
    assert ecs.proxy.tokens == [
        orchestrator.client_token(PROJECT_A, window, 0),
        orchestrator.client_token(PROJECT_A, window, 1),
    ]


def test_aws_errors_are_service_unavailable_naming_what_failed(
    ecs: EcsInstanceOrchestratorHarness,
) -> None:
    lost = ecs.another_orchestrator(cluster="no-such-cluster")
    with pytest.raises(ServiceUnavailable, match="cluster"):
        lost.ensure(PROJECT_A)
    unreachable = EcsInstanceOrchestrator(aws_client("ecs", "http://127.0.0.1:9"), ecs.config)
    with pytest.raises(ServiceUnavailable, match="ECS unreachable during ListTasks"):
        unreachable.describe(PROJECT_A)


def test_describe_reports_the_stop_reason(ecs: EcsInstanceOrchestratorHarness) -> None:
    started = ecs.orchestrator.ensure(PROJECT_A)
    ecs.orchestrator.stop(PROJECT_A, "idle for 30 minutes")
    stopped = ecs.orchestrator.describe(PROJECT_A)
    assert stopped is not None
    assert (stopped.instance_id, stopped.status, stopped.live) == (
        started.instance_id,
        "STOPPED",
        False,
    )
    assert stopped.stop_reason == "idle for 30 minutes"


# ---------------------------------------------------------------- one start per project


def test_two_processes_ensuring_at_once_start_one_task(ecs: EcsInstanceOrchestratorHarness) -> None:
    """Each orchestrator has its own client and its own lock: only the token joins them."""
    first, second = ecs.another_orchestrator(), ecs.another_orchestrator()
    for round_ in range(3):
        before = ecs.starts()
        a, b = together(lambda: first.ensure(PROJECT_A), lambda: second.ensure(PROJECT_A))
        assert a.instance_id == b.instance_id, f"round {round_}"
        assert ecs.starts() == before + 1
        assert [t["taskArn"] for t in ecs.live_tasks(PROJECT_A)] == [a.instance_id]
        first.stop(PROJECT_A, "next round")  # the next round walks to the next token
    assert len(set(ecs.proxy.tokens)) == 3


def test_stop_then_ensure_in_the_same_window_uses_the_next_token(
    ecs: EcsInstanceOrchestratorHarness,
) -> None:
    now = time.time()
    orchestrator = ecs.another_orchestrator(wall_clock=lambda: now)
    first = orchestrator.ensure(PROJECT_A)
    orchestrator.stop(PROJECT_A, "idle")
    second = orchestrator.ensure(PROJECT_A)
    assert second.instance_id != first.instance_id
    window = int(now // 900)
    assert ecs.proxy.tokens == [
        orchestrator.client_token(PROJECT_A, window, 0),
        orchestrator.client_token(PROJECT_A, window, 0),  # answered with the stopped task
        orchestrator.client_token(PROJECT_A, window, 1),
    ]


def test_a_crash_looping_instance_is_not_restarted_past_the_window_budget(
    ecs: EcsInstanceOrchestratorHarness,
) -> None:
    now = time.time()
    orchestrator = ecs.another_orchestrator(wall_clock=lambda: now, max_starts_per_window=2)
    for _ in range(2):
        orchestrator.ensure(PROJECT_A)
        orchestrator.stop(PROJECT_A, "EssentialContainerExited")
    with pytest.raises(ServiceUnavailable, match="not starting another"):
        orchestrator.ensure(PROJECT_A)
    assert ecs.starts() == 2
    later = ecs.another_orchestrator(wall_clock=lambda: now + 900, max_starts_per_window=2)
    assert later.ensure(PROJECT_A).live


def test_a_token_used_with_other_parameters_joins_its_task(
    ecs: EcsInstanceOrchestratorHarness,
) -> None:
    """Another deployment (other settings) used this window's token first, and its task is not
    listed yet: the ConflictException names the task, which becomes the instance."""
    now = time.time()
    newer = ecs.another_orchestrator(wall_clock=lambda: now, extra_environment={"V": "2"})
    token = newer.client_token(PROJECT_A, int(now // 900), 0)
    raw = aws_client("ecs", ecs.proxy.endpoint)
    theirs = raw.run_task(
        cluster=CLUSTER,
        taskDefinition=ecs.config.task_definition,
        launchType="FARGATE",
        networkConfiguration={
            "awsvpcConfiguration": {
                "subnets": list(ecs.config.subnets),
                "securityGroups": list(ecs.config.security_groups),
            }
        },
        startedBy="not-yet-listed",
        clientToken=token,
    )["tasks"][0]["taskArn"]
    assert newer.ensure(PROJECT_A).instance_id == theirs
    assert ecs.starts() == 1


def test_duplicates_are_stopped_keeping_one(ecs: EcsInstanceOrchestratorHarness) -> None:
    """Two tasks for one project (a start across a window edge, or by hand): ensure keeps one."""
    ecs.start_behind_the_back(PROJECT_A.key)
    ecs.start_behind_the_back(PROJECT_A.key)
    kept = ecs.orchestrator.ensure(PROJECT_A)
    assert [t["taskArn"] for t in ecs.live_tasks(PROJECT_A)] == [kept.instance_id]
    stopped = [t for t in ecs.tasks(PROJECT_A.key) if t["taskArn"] != kept.instance_id]
    assert len(stopped) == 1
    assert stopped[0]["stoppedReason"].startswith("duplicate workflow instance")
    assert ecs.starts() == 2
    described = ecs.orchestrator.describe(PROJECT_A)
    assert described is not None
    assert described.instance_id == kept.instance_id


def test_callers_across_a_window_edge_end_with_one_live_task(
    ecs: EcsInstanceOrchestratorHarness,
) -> None:
    now = time.time()
    before = ecs.another_orchestrator(wall_clock=lambda: now)
    after = ecs.another_orchestrator(wall_clock=lambda: now + 900)
    a, b = together(lambda: before.ensure(PROJECT_A), lambda: after.ensure(PROJECT_A))
    live = ecs.live_tasks(PROJECT_A)
    assert len(live) == 1
    assert live[0]["taskArn"] in (a.instance_id, b.instance_id)
    assert before.ensure(PROJECT_A).instance_id == live[0]["taskArn"]
    assert after.ensure(PROJECT_A).instance_id == live[0]["taskArn"]
