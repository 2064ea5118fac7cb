"""``obp-workflow worker``: the workflow container's command.

It reads the settings (the project comes from ``OBP_VIRTUAL_LAB_ID`` and ``OBP_PROJECT_ID``,
which the orchestrator sets on the container), builds the pipeline side of the service, and
drives the project's runs until SIGTERM or idle (``process.py``).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from obp_workflow.core.errors import InvalidRequest
from obp_workflow.core.identity import ProjectRef
from obp_workflow.entrypoints.composition.logs import configure_processes
from obp_workflow.entrypoints.composition.root import build
from obp_workflow.entrypoints.composition.settings import Settings, SettingsError, load_settings

from .luigid import LuigidFailed
from .process import Worker, WorkerConfig

log = logging.getLogger("obp_workflow.worker")


def config_from(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        threads=settings.worker_threads,
        poll=settings.worker_poll_seconds,
        sweep=settings.worker_sweep_seconds,
        provisioning_poll=settings.worker_provisioning_poll_seconds,
        idle=settings.worker_idle_minutes * 60,
        luigid_port=settings.luigid_port,
    )


def worker_for(settings: Settings) -> Worker:
    """The worker of the project the settings name; SettingsError when they name none."""
    if not settings.virtual_lab_id or not settings.project_id:
        raise SettingsError(
            "invalid configuration:\n  the worker needs its project: "
            "OBP_VIRTUAL_LAB_ID and OBP_PROJECT_ID"
        )
    try:
        project = ProjectRef.parse(settings.virtual_lab_id, settings.project_id)
    except InvalidRequest as exc:
        problems = "\n  ".join(f"OBP_{e.field.upper()}: {e.rule}" for e in exc.errors)
        raise SettingsError(f"invalid configuration:\n  {problems}") from None
    container = build(settings)
    return Worker(
        project,
        container.pipeline(),
        container.run_repository(),
        container.instance_orchestrator(),
        config_from(settings),
    )


def main() -> int:
    try:
        settings = load_settings()
        configure_processes(settings.log_level)
        worker = worker_for(settings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        worker.stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    try:
        return worker.run()
    except LuigidFailed as exc:
        log.error("the worker cannot start: %s", exc)
        return 1
