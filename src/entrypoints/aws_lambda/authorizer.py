"""The API Gateway REQUEST authorizer Lambda: a bearer token in, an IAM policy and the caller out.

A thin shell over :func:`~obp_workflow.entrypoints.http.authorization.authorize`. Cold path:
this module imports only the domain's identity; the token verifier alone is built on the first
call (:mod:`~obp_workflow.entrypoints.composition.token_verifier`: its own settings and its
adapter, not the composition root) and kept for the life of the warm environment.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from obp_workflow.entrypoints.http.authorization import authorize

if TYPE_CHECKING:
    from obp_workflow.entrypoints.composition.root import Service
    from obp_workflow.ports.identity import TokenVerifier


class _Environment:
    """What one warm Lambda environment keeps between invocations."""

    def __init__(self) -> None:
        self.container: Service | None = None
        self.token_verifier: TokenVerifier | None = None
        self.lock = threading.Lock()

    def verifier(self) -> TokenVerifier:
        with self.lock:
            if self.container is not None:
                token_verifier: TokenVerifier = self.container.token_verifier()
                return token_verifier
            if self.token_verifier is None:
                # Only the verifier, from its own settings: not the whole composition root.
                from obp_workflow.entrypoints.composition.logs import apply_log_level
                from obp_workflow.entrypoints.composition.token_verifier import (
                    build_token_verifier,
                    load_token_settings,
                )

                settings = load_token_settings()
                apply_log_level(settings.log_level)
                self.token_verifier = build_token_verifier(settings)
            return self.token_verifier


_environment = _Environment()


def use_container(container: Service | None) -> None:
    """Inject the container whose verifier this environment uses (tests); None to build the
    verifier alone from settings."""
    with _environment.lock:
        _environment.container = container
        _environment.token_verifier = None


def handler(event: Mapping[str, Any], context: object) -> dict[str, Any]:
    """The Lambda entry point."""
    return authorize(event, _environment.verifier())
