"""An in-memory RunRepository that stores serialised records, as a database would."""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Sequence

from obp_workflow.core.cursors import decode_cursor, encode_cursor, position
from obp_workflow.core.errors import (
    Conflict,
    CorruptRecord,
    FieldError,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
)
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.records import dumps, loads
from obp_workflow.core.run import ACTIVE_STATES, JobWatch, RunBrief, RunState, SimulationRun
from obp_workflow.ports.runs import Page, RunRepository

from .faults import Faults


class FakeRunRepository(RunRepository):
    def __init__(self) -> None:
        self._records: dict[tuple[ProjectRef, str], str] = {}
        self._keys: dict[tuple[ProjectRef, str], str] = {}
        self._watches: dict[tuple[ProjectRef, str], JobWatch] = {}
        self._briefs: dict[tuple[ProjectRef, str], RunBrief] = {}
        self._lock = threading.Lock()
        self.faults = Faults()

    def add(self, run: SimulationRun) -> None:
        self.faults.before("add")
        with self._lock:
            ident = (run.project, run.run_id)
            if ident in self._records:
                raise Conflict(f"run {run.run_id} exists already")
            key = run.header.idempotency_key
            if key is not None and (run.project, key) in self._keys:
                raise IdempotencyConflict(f"idempotency key already used in project {run.project}")
            self._records[ident] = dumps(run)
            self._index(ident, run)
            if key is not None:
                self._keys[(run.project, key)] = run.run_id
        self.faults.after("add")

    def get(self, project: ProjectRef, run_id: str) -> SimulationRun:
        self.faults.before("get")
        with self._lock:
            record = self._records.get((project, run_id))
        if record is None:
            raise NotFound(f"run {run_id} not found in project {project}")
        return loads(record)

    def save(self, run: SimulationRun, expected_version: int) -> None:
        self.faults.before("save")
        with self._lock:
            ident = (run.project, run.run_id)
            current = self._records.get(ident)
            if current is None:
                raise NotFound(f"run {run.run_id} not found in project {run.project}")
            try:
                stored_version = json.loads(current)["version"]
            except (ValueError, TypeError, KeyError, RecursionError):
                raise CorruptRecord(f"run {run.run_id}: the stored record is damaged") from None
            if stored_version != expected_version:
                raise Conflict(
                    f"run {run.run_id} changed meanwhile (version {stored_version}, "
                    f"expected {expected_version})"
                )
            self._records[ident] = dumps(run)
            self._index(ident, run)
        self.faults.after("save")

    def find_by_idempotency_key(self, project: ProjectRef, key: str) -> SimulationRun | None:
        with self._lock:
            run_id = self._keys.get((project, key))
        return None if run_id is None else self.get(project, run_id)

    def list(
        self,
        project: ProjectRef,
        states: Collection[RunState] | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        if limit < 1:  # as the durable adapters do
            raise InvalidRequest([FieldError("limit", "must be at least 1")])
        after = decode_cursor(cursor, project, states) if cursor else None
        with self._lock:
            records = [r for (p, _), r in self._records.items() if p == project]
        runs = [loads(r) for r in records]
        wanted = set(states) if states else None
        # Newest first; the run id breaks ties so the order is total and stable across pages.
        runs = sorted(
            (r for r in runs if wanted is None or r.state in wanted), key=position, reverse=True
        )
        if after is not None:
            runs = [r for r in runs if position(r) < after]
        page = runs[:limit]
        more = len(runs) > limit
        return Page(page, encode_cursor(project, states, position(page[-1])) if more else None)

    def list_active(self, project: ProjectRef | None = None) -> Sequence[RunBrief]:
        with self._lock:
            return [b for (p, _), b in self._briefs.items() if project in (None, p)]

    def list_watched(self, project: ProjectRef | None = None) -> Sequence[JobWatch]:
        with self._lock:
            return [w for (p, _), w in self._watches.items() if project in (None, p)]

    def _index(self, ident: tuple[ProjectRef, str], run: SimulationRun) -> None:
        if run.state in ACTIVE_STATES:
            self._briefs[ident] = run.brief()
        else:
            self._briefs.pop(ident, None)
        watch = run.watch()
        if watch is None:
            self._watches.pop(ident, None)
        else:
            self._watches[ident] = watch

    # -- test helpers
    def corrupt(self, project: ProjectRef, run_id: str, record: str) -> None:
        """Overwrite a stored record with anything (to test reading damaged data)."""
        with self._lock:
            self._records[(project, run_id)] = record
