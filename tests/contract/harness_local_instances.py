"""The process InstanceOrchestrator of the one-machine family under the instance contract.

The instances are real detached processes, recorded in a temporary OBP_HOME; to keep the
contract fast and independent of the worker, each is a plain long sleep (the worker itself is
started in ``tests/integration/test_local_instance_orchestrator.py``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from obp_workflow.adapters.local.instance_orchestrator import ProcessInstanceOrchestrator
from obp_workflow.ports.instances import InstanceOrchestrator
from tests.contract.harness import PROJECT_A, PROJECT_B

if TYPE_CHECKING:
    from tests.contract.harness import InstanceOrchestratorHarness

#: What each instance runs here: it lives until stopped (or five minutes pass).
SLEEPER = ("sleep", "300")


class ProcessInstanceOrchestratorHarness:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="obp-home-"))
        self.processes = ProcessInstanceOrchestrator(
            self.home, {"PATH": "/usr/bin:/bin"}, command=SLEEPER
        )
        self.orchestrator: InstanceOrchestrator = self.processes

    def starts(self) -> int:
        return self.processes.starts

    def close(self) -> None:
        for project in (PROJECT_A, PROJECT_B):
            self.processes.stop(project, "end of test")
        shutil.rmtree(self.home, ignore_errors=True)


if TYPE_CHECKING:  # mypy proves the harness implements the harness protocol
    _orchestrators: list[Callable[[], InstanceOrchestratorHarness]] = [
        ProcessInstanceOrchestratorHarness
    ]
