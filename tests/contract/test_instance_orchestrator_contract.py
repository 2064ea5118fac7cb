"""The InstanceOrchestrator contract: at most one live workflow instance per project."""

from __future__ import annotations

import threading

from obp_workflow.ports.instances import InstanceInfo
from tests.contract.harness import PROJECT_A, PROJECT_B, InstanceOrchestratorHarness


def test_ensure_starts_one_live_instance(
    instance_orchestrator_harness: InstanceOrchestratorHarness,
) -> None:
    h = instance_orchestrator_harness
    before = h.starts()
    info = h.orchestrator.ensure(PROJECT_A)
    assert h.starts() == before + 1
    assert info.project == PROJECT_A
    assert info.instance_id
    assert info.live
    described = h.orchestrator.describe(PROJECT_A)
    assert described is not None
    assert described.instance_id == info.instance_id
    assert described.live


def test_ensure_again_returns_the_same_instance(
    instance_orchestrator_harness: InstanceOrchestratorHarness,
) -> None:
    h = instance_orchestrator_harness
    first = h.orchestrator.ensure(PROJECT_A)
    starts = h.starts()
    for _ in range(3):
        assert h.orchestrator.ensure(PROJECT_A).instance_id == first.instance_id
    assert h.starts() == starts


def test_concurrent_ensures_start_exactly_one(
    instance_orchestrator_harness: InstanceOrchestratorHarness,
) -> None:
    h = instance_orchestrator_harness
    threads = 8
    before = h.starts()
    together = threading.Barrier(threads)
    got: list[InstanceInfo] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            together.wait(timeout=10)
            got.append(h.orchestrator.ensure(PROJECT_A))
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=call) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=30)
    assert errors == []
    assert len(got) == threads
    assert h.starts() == before + 1
    assert len({info.instance_id for info in got}) == 1


def test_describe_of_a_project_without_an_instance_is_none(
    instance_orchestrator_harness: InstanceOrchestratorHarness,
) -> None:
    assert instance_orchestrator_harness.orchestrator.describe(PROJECT_B) is None


def test_stop_then_ensure_starts_a_new_instance(
    instance_orchestrator_harness: InstanceOrchestratorHarness,
) -> None:
    h = instance_orchestrator_harness
    first = h.orchestrator.ensure(PROJECT_A)
    h.orchestrator.stop(PROJECT_A, "idle for 30 minutes")
    stopped = h.orchestrator.describe(PROJECT_A)
    assert stopped is None or not stopped.live
    if stopped is not None:
        assert stopped.instance_id == first.instance_id
        assert stopped.stop_reason == "idle for 30 minutes"
    before = h.starts()
    second = h.orchestrator.ensure(PROJECT_A)
    assert h.starts() == before + 1
    assert second.live
    assert second.instance_id != first.instance_id


def test_stop_is_idempotent(instance_orchestrator_harness: InstanceOrchestratorHarness) -> None:
    h = instance_orchestrator_harness
    h.orchestrator.stop(PROJECT_B, "never started")
    first = h.orchestrator.ensure(PROJECT_A)
    h.orchestrator.stop(PROJECT_A, "idle")
    h.orchestrator.stop(PROJECT_A, "idle again")
    stopped = h.orchestrator.describe(PROJECT_A)
    assert stopped is None or (not stopped.live and stopped.instance_id == first.instance_id)
    assert h.orchestrator.describe(PROJECT_B) is None


def test_projects_have_independent_instances(
    instance_orchestrator_harness: InstanceOrchestratorHarness,
) -> None:
    h = instance_orchestrator_harness
    a = h.orchestrator.ensure(PROJECT_A)
    b = h.orchestrator.ensure(PROJECT_B)
    assert a.instance_id != b.instance_id
    assert (a.project, b.project) == (PROJECT_A, PROJECT_B)
    h.orchestrator.stop(PROJECT_A, "idle")
    still = h.orchestrator.describe(PROJECT_B)
    assert still is not None
    assert still.live
    assert still.instance_id == b.instance_id
    assert h.orchestrator.ensure(PROJECT_B).instance_id == b.instance_id
