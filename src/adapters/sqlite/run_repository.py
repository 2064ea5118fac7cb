"""A RunRepository in one SQLite file: durable runs for one machine, safe for many processes.

One table. Each row holds the run's record (``core.records.dumps``) and, beside it, the columns
the queries need so that no query parses JSON: the project, the run id, the sort position
(creation instant, then run id), the state and an ``active`` flag, the version (the optimistic
concurrency token), the idempotency key (UNIQUE per project) and the run's ``JobWatch``.

Concurrency: WAL mode (readers never block the writer), a busy timeout, and every write in a
``BEGIN IMMEDIATE`` transaction (the write lock is taken before anything is read, so a
check-then-write can never be overtaken). ``save`` writes ``WHERE version = ?``: a stale write
is a Conflict and never overwrites. Connections come from a small pool, one per concurrent
caller, never shared by two threads at once, and never carried across a fork.

Every sqlite error leaves as a domain error: a locked database or an I/O problem is
ServiceUnavailable; a row or a database file that cannot be decoded is CorruptRecord.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Collection, Sequence

from obp_workflow.core.cursors import decode_cursor, encode_cursor, filter_key, position
from obp_workflow.core.errors import (
    Conflict,
    CorruptRecord,
    DomainError,
    FieldError,
    IdempotencyConflict,
    InvalidRequest,
    NotFound,
)
from obp_workflow.core.identity import ProjectRef
from obp_workflow.core.records import dumps, intact, loads_stored
from obp_workflow.core.run import JobWatch, RunBrief, RunState, SimulationRun
from obp_workflow.ports.runs import Page, RunRepository

from .database import Database

#: The layout of the file; a file written by a newer layout is refused, never misread.
LAYOUT_VERSION = 1

_LAYOUT = """
CREATE TABLE IF NOT EXISTS runs (
    project         TEXT    NOT NULL,
    run_id          TEXT    NOT NULL,
    created_at      TEXT    NOT NULL,
    position        TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    active          INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    idempotency_key TEXT,
    watch_job       TEXT,
    watch_raw       TEXT,
    watch_stale     INTEGER,
    record          TEXT    NOT NULL,
    PRIMARY KEY (project, run_id),
    UNIQUE (project, idempotency_key)
);
CREATE INDEX IF NOT EXISTS runs_by_position ON runs (project, position);
CREATE INDEX IF NOT EXISTS runs_active ON runs (project, position) WHERE active = 1;
CREATE INDEX IF NOT EXISTS runs_watched ON runs (project, run_id) WHERE watch_job IS NOT NULL;
"""

log = logging.getLogger(__name__)


#: The columns a write sets, in the order of ``_row``.
_INSERT = (
    "INSERT INTO runs (project, run_id, created_at, position, state, active, version, "
    "idempotency_key, watch_job, watch_raw, watch_stale, record) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = (
    "UPDATE runs SET project = ?, run_id = ?, created_at = ?, position = ?, state = ?, "
    "active = ?, version = ?, idempotency_key = ?, watch_job = ?, watch_raw = ?, "
    "watch_stale = ?, record = ? "
    "WHERE project = ? AND run_id = ? AND version = ?"
)
_GET = "SELECT CAST(record AS BLOB) FROM runs WHERE project = ? AND run_id = ?"
_EXISTS = "SELECT 1 FROM runs WHERE project = ? AND run_id = ?"
_KEY_TAKEN = "SELECT 1 FROM runs WHERE project = ? AND idempotency_key = ?"
_BY_KEY = "SELECT run_id, CAST(record AS BLOB) FROM runs WHERE project = ? AND idempotency_key = ?"
#: One page of a project's runs, newest first. ``:states`` is a JSON array, or NULL for all.
_LIST = """
SELECT run_id, position, CAST(record AS BLOB) FROM runs
WHERE project = :project AND position < :after
  AND (:states IS NULL OR state IN (SELECT value FROM json_each(:states)))
ORDER BY position DESC LIMIT :limit
"""
#: Sorts after every position (a position starts with a digit): the first page's bound.
_FIRST = "~"
_ACTIVE = """
SELECT project, run_id, state, watch_job IS NOT NULL FROM runs
WHERE active = 1 AND (:project IS NULL OR project = :project)
ORDER BY project, position DESC
"""
_WATCHED = """
SELECT project, run_id, watch_job, watch_raw, watch_stale FROM runs
WHERE watch_job IS NOT NULL AND (:project IS NULL OR project = :project)
ORDER BY project, run_id
"""


class SqliteRunRepository(RunRepository):
    """Runs in the SQLite file at ``path`` (created with its table when missing)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_seconds: float = 5.0) -> None:
        self.path = os.fspath(path)
        self._db = Database(
            self.path,
            _LAYOUT,
            LAYOUT_VERSION,
            what="run database",
            busy_timeout_seconds=busy_timeout_seconds,
            on_integrity=_integrity,
        )

    # ---------------------------------------------------------------- the port

    def add(self, run: SimulationRun) -> None:
        row = _row(run)
        with self._db.write() as conn:
            ident = (run.project.key, run.run_id)
            if conn.execute(_EXISTS, ident).fetchone():
                raise Conflict(f"run {run.run_id} exists already")
            key = run.header.idempotency_key
            if key is not None and conn.execute(_KEY_TAKEN, (run.project.key, key)).fetchone():
                raise IdempotencyConflict(f"idempotency key already used in project {run.project}")
            conn.execute(_INSERT, row)

    def get(self, project: ProjectRef, run_id: str) -> SimulationRun:
        with self._db.read() as conn:
            found = conn.execute(_GET, (project.key, run_id)).fetchone()
        if found is None:
            raise NotFound(f"run {run_id} not found in project {project}")
        return _run(found[0], project, run_id)

    def save(self, run: SimulationRun, expected_version: int) -> None:
        row = _row(run)
        ident = (run.project.key, run.run_id)
        with self._db.write() as conn:
            if conn.execute(_UPDATE, (*row, *ident, expected_version)).rowcount == 1:
                return
            current = conn.execute(
                "SELECT version FROM runs WHERE project = ? AND run_id = ?", ident
            ).fetchone()
        if current is None:
            raise NotFound(f"run {run.run_id} not found in project {run.project}")
        raise Conflict(
            f"run {run.run_id} changed meanwhile (version {current[0]}, "
            f"expected {expected_version})"
        )

    def find_by_idempotency_key(self, project: ProjectRef, key: str) -> SimulationRun | None:
        with self._db.read() as conn:
            found = conn.execute(_BY_KEY, (project.key, key)).fetchone()
        return None if found is None else _run(found[1], project, found[0])

    def list(
        self,
        project: ProjectRef,
        states: Collection[RunState] | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        if limit < 1:
            raise InvalidRequest([FieldError("limit", "must be at least 1")])
        after = decode_cursor(cursor, project, states) if cursor else _FIRST
        query = {
            "project": project.key,
            "after": after,
            "states": json.dumps(filter_key(states)) if states else None,
            "limit": limit + 1,
        }
        with self._db.read() as conn:
            rows = conn.execute(_LIST, query).fetchall()
        page = rows[:limit]
        runs = [_run(record, project, run_id) for run_id, _, record in page]
        more = len(rows) > limit
        return Page(runs, encode_cursor(project, states, page[-1][1]) if more else None)

    def list_active(self, project: ProjectRef | None = None) -> Sequence[RunBrief]:
        with self._db.read() as conn:
            rows = conn.execute(_ACTIVE, {"project": project and project.key}).fetchall()
        return intact(rows, lambda row: _brief(*row), _skipped)

    def list_watched(self, project: ProjectRef | None = None) -> Sequence[JobWatch]:
        with self._db.read() as conn:
            rows = conn.execute(_WATCHED, {"project": project and project.key}).fetchall()
        return [_watch(*row) for row in rows]

    # ---------------------------------------------------------------- housekeeping

    def close(self) -> None:
        """Close the idle connections (one in use is closed when it comes back)."""
        self._db.close()


# ==================================================================== rows


def _row(run: SimulationRun) -> tuple[object, ...]:
    """The values of a run's row, in the order of ``_INSERT`` and ``_UPDATE``."""
    watch = run.watch()
    return (
        run.project.key,
        run.run_id,
        run.header.created_at.isoformat(),
        position(run),
        run.state.value,
        0 if run.terminal else 1,
        run.version,
        run.header.idempotency_key,
        watch.job_id if watch else None,
        watch.last_raw if watch else None,
        int(watch.stale) if watch else None,
        dumps(run),
    )


def _run(record: object, project: ProjectRef, run_id: str) -> SimulationRun:
    """The run stored in a row, which must be the run the row's keys say."""
    if not isinstance(record, bytes | str):
        raise CorruptRecord(f"run {run_id}: the stored record is not text")
    return loads_stored(record, project, run_id)


def _project(key: object) -> ProjectRef:
    try:
        virtual_lab_id, project_id = str(key).split("/")
        return ProjectRef.parse(virtual_lab_id, project_id)
    except (ValueError, InvalidRequest):
        raise CorruptRecord(f"a stored run has an unreadable project key {key!r:.80}") from None


def _brief(key: object, run_id: object, state: object, watching: object) -> RunBrief:
    try:
        return RunBrief(_project(key), str(run_id), RunState(state), bool(watching))
    except ValueError:
        raise CorruptRecord(f"run {run_id!r:.100} has an unreadable state {state!r:.40}") from None


def _watch(key: object, run_id: object, job: object, raw: object, stale: object) -> JobWatch:
    if (
        not isinstance(run_id, str)
        or not isinstance(job, str)
        or not (raw is None or isinstance(raw, str))
        or stale not in (0, 1)
    ):
        raise CorruptRecord(f"the job watch of run {run_id!r:.80} is damaged")
    return JobWatch(_project(key), run_id, job, raw, bool(stale))


# ==================================================================== errors


def _integrity(exc: sqlite3.IntegrityError) -> DomainError:
    """The layout's backstop: the checks inside the write transaction come first."""
    if "idempotency_key" in str(exc):
        return IdempotencyConflict("idempotency key already used in this project")
    return Conflict(f"the run database refused the write ({exc})")


def _skipped(damage: CorruptRecord) -> None:
    """A damaged record left out of a listing (``get`` on it raises CorruptRecord)."""
    log.warning("a damaged run record was left out of a listing: %s", damage.message)
