"""The EventPublisher contract: best effort, never raises."""

from __future__ import annotations

import pytest

from obp_workflow.core.run import RunEvent, RunState
from obp_workflow.ports.system import EventPublisher
from tests.contract.harness import PROJECT_A, T0

EVENTS = {
    "accepted": RunEvent(1, T0, "accepted", None, RunState.ACCEPTED, "request accepted"),
    "hostile-reason": RunEvent(
        2,
        T0,
        "failed",
        RunState.ACCEPTED,
        RunState.FAILED,
        'line1\nline2 "quoted" \x1b[31m $(id) é 🙂 \udcff',
        {"failure_reason": "x\ny"},
    ),
}


@pytest.mark.parametrize("kind", list(EVENTS))
def test_publish_does_not_raise(publisher: EventPublisher, kind: str) -> None:
    assert publisher.publish(PROJECT_A, "run-00000001", EVENTS[kind]) is None
