"""The REST API as one function: an API Gateway event (REST, payload 1.0) in, a response out.

:func:`handle` runs the checks before routing (``prepare.py``), then powertools' resolver with
the routes (``routes.py``) and the problem mapping (``problems.py``). Every error is an RFC 9457
problem whose ``type`` names the domain error's stable kind. The ways in (the API Lambda, the
local gateway) call it with a callable that gives the requests side of the service, looked up
only by routes that need it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import problems, routes  # noqa: F401  (both register themselves with the resolver)
from .prepare import Refused, prepare
from .resolver import MAX_BODY_BYTES, app, public_path

if TYPE_CHECKING:
    from obp_workflow.application.requests import Requests

__all__ = ["MAX_BODY_BYTES", "handle", "public_path"]

#: Powertools keeps the current event on the resolver class: one request at a time.
_resolve_lock = threading.Lock()


def handle(
    event: Mapping[str, Any], context: Any, requests: Callable[[], Requests]
) -> dict[str, Any]:
    """Answer one event; ``requests()`` is called only by routes that need the service."""
    try:
        prepared = prepare(event)
    except Refused as refused:
        return refused.response
    with _resolve_lock:
        app.context.update(principal=prepared.principal, requests=requests)
        return app.resolve(prepared.event, context)
