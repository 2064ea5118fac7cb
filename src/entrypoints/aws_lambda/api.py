"""The API Lambda (the container-instances handler): a thin shell over the REST application.

``handler`` answers one API Gateway event with :func:`~obp_workflow.entrypoints.http.api.handle`.
The container is built from settings on the first request that needs the service and kept for
the life of the warm environment; only its requests side is ever built here (the repository,
the instance orchestrator, the clock and ids), never the pipeline.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from obp_workflow.entrypoints.http.api import handle

if TYPE_CHECKING:
    from obp_workflow.application.requests import Requests
    from obp_workflow.entrypoints.composition.root import Service


class _Environment:
    """What one warm Lambda environment keeps between invocations."""

    def __init__(self) -> None:
        self.container: Service | None = None
        self.lock = threading.Lock()

    def requests(self) -> Requests:
        with self.lock:
            if self.container is None:
                from obp_workflow.entrypoints.composition.logs import apply_log_level
                from obp_workflow.entrypoints.composition.root import build
                from obp_workflow.entrypoints.composition.settings import load_settings

                settings = load_settings()
                apply_log_level(settings.log_level)
                self.container = build(settings)
            requests: Requests = self.container.requests()
            return requests


_environment = _Environment()


def use_container(container: Service | None) -> None:
    """Inject the container this environment uses (tests); None to build it from settings."""
    with _environment.lock:
        _environment.container = container


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda entry point."""
    return handle(event, context, _environment.requests)
