"""How a run is written down and read back: its header and its events, with a schema version.

Every repository adapter stores this record (as JSON or as attributes); reading replays the
events, so a stored run can never hold a state its history does not explain.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar

from obp_workflow.core.errors import CorruptRecord, InvalidRequest
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.request import SimulationRequest
from obp_workflow.core.run import Requester, RunEvent, RunHeader, RunState, SimulationRun

_T = TypeVar("_T")
_R = TypeVar("_R")

SCHEMA_VERSION = 1


def run_to_record(run: SimulationRun) -> dict[str, Any]:
    h = run.header
    return {
        "schema": SCHEMA_VERSION,
        "run_id": h.run_id,
        "virtual_lab_id": h.project.virtual_lab_id,
        "project_id": h.project.project_id,
        "requested_by": {"subject": h.requested_by.subject, "username": h.requested_by.username},
        "request": h.request.model_dump(mode="json"),
        "created_at": h.created_at.isoformat(),
        "idempotency_key": h.idempotency_key,
        "request_digest": h.request.digest(),
        "state": run.state.value,
        "version": run.version,
        "events": [
            {
                "v": e.version,
                "at": e.at.isoformat(),
                "kind": e.kind,
                "from": e.from_state.value if e.from_state else None,
                "to": e.to_state.value,
                "reason": e.reason,
                "data": dict(e.data),
            }
            for e in run.events
        ],
    }


def run_from_record(record: object) -> SimulationRun:
    """Read a run back; anything damaged or of an unknown schema is a CorruptRecord."""
    if not isinstance(record, dict):
        raise CorruptRecord("a stored run is not an object")
    run_id = record.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise CorruptRecord("a stored run has no run id")
    schema = record.get("schema")
    if schema != SCHEMA_VERSION:
        raise CorruptRecord(
            f"run {run_id} was stored with schema version {schema!r}; "
            f"this service reads version {SCHEMA_VERSION}"
        )
    try:
        header = RunHeader(
            run_id=run_id,
            project=ProjectRef.parse(record["virtual_lab_id"], record["project_id"]),
            requested_by=Requester(
                str(record["requested_by"]["subject"]), str(record["requested_by"]["username"])
            ),
            request=SimulationRequest.parse(record["request"]),
            created_at=datetime.fromisoformat(record["created_at"]),
            idempotency_key=record.get("idempotency_key"),
        )
        events = [
            RunEvent(
                version=int(e["v"]),
                at=datetime.fromisoformat(e["at"]),
                kind=str(e["kind"]),
                from_state=RunState(e["from"]) if e["from"] else None,
                to_state=RunState(e["to"]),
                reason=str(e["reason"]),
                data={str(k): str(v) for k, v in e["data"].items()},
            )
            for e in record["events"]
        ]
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, InvalidRequest) as exc:
        raise CorruptRecord(f"run {run_id}: the stored record is damaged ({exc!r:.200})") from None
    run = SimulationRun.replay(header, events)
    if run.version != record.get("version") or run.state.value != record.get("state"):
        raise CorruptRecord(f"run {run_id}: stored state disagrees with its events")
    return run


def dumps(run: SimulationRun) -> str:
    return json.dumps(run_to_record(run), separators=(",", ":"), sort_keys=True)


def loads(text: str | bytes) -> SimulationRun:
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise CorruptRecord("a stored run is not valid JSON") from None
    return run_from_record(record)


def loads_stored(text: str | bytes, project: ProjectRef, run_id: str) -> SimulationRun:
    """The run a storage row or item holds, which must be the run its keys say it is."""
    run = loads(text)
    if run.project != project or run.run_id != run_id:
        raise CorruptRecord(
            f"the record stored as run {run_id} of project {project} is run {run.run_id} "
            f"of project {run.project}"
        )
    return run


def intact(
    items: Iterable[_T],
    load: Callable[[_T], _R],
    damaged: Callable[[CorruptRecord], None],
) -> list[_R]:
    """The runs (or briefs) of ``items`` that load; each that does not is reported to
    ``damaged`` and left out, so one damaged record never hides the others from a listing."""
    runs: list[_R] = []
    for item in items:
        try:
            runs.append(load(item))
        except CorruptRecord as exc:
            damaged(exc)
    return runs
