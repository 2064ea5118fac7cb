"""Where a run sorts in its project's listing, and the opaque cursors that point there.

Every repository adapter lists newest first by creation, then by run id, and hands out the same
cursor: base64 of the project, the state filter and the position after which the next page
starts. A cursor is untrusted input: one made for another project or filter, or forged, is
InvalidRequest, so it can never make a listing read another project's runs.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Collection
from datetime import UTC, datetime

from obp_workflow.core.errors import FieldError, InvalidRequest
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.run import RunState, SimulationRun

MAX_CURSOR_CHARS = 2048
_POSITION = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\|.{1,400}", re.DOTALL)


def stamp(at: datetime) -> str:
    """The instant in UTC, fixed width, so that positions compare as instants (a naive time is
    taken as UTC)."""
    utc = at.astimezone(UTC) if at.tzinfo is not None else at
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def position(run: SimulationRun) -> str:
    """Where a run sorts: newest first by creation, then by run id."""
    return f"{stamp(run.header.created_at)}|{run.run_id}"


def filter_key(states: Collection[RunState] | None) -> list[str]:
    return sorted({s.value for s in states or ()})


def encode_cursor(project: ProjectRef, states: Collection[RunState] | None, after: str) -> str:
    payload = {"p": project.key, "s": filter_key(states), "a": after}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, project: ProjectRef, states: Collection[RunState] | None) -> str:
    """The position a cursor points at; InvalidRequest when it was not made for this query."""
    bad = InvalidRequest([FieldError("cursor", "is not a cursor of this listing")])
    if len(cursor) > MAX_CURSOR_CHARS:
        raise bad
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise bad from None
    if (
        not isinstance(payload, dict)
        or payload.get("p") != project.key
        or payload.get("s") != filter_key(states)
        or not isinstance(payload.get("a"), str)
        or not _POSITION.fullmatch(payload["a"])
    ):
        raise bad
    return str(payload["a"])
