"""One SQLite file shared by the processes of one machine: WAL, a busy timeout, and every write
a ``BEGIN IMMEDIATE`` transaction (the write lock is taken before anything is read, so a
check-then-write is never overtaken by another process).

Connections come from a small pool, each lent to one caller at a time and never carried across
a fork. Every sqlite error leaves as a domain error: a busy database or an I/O problem is
``ServiceUnavailable``; a file that is not a database, or is damaged, is ``CorruptRecord``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

from obp_workflow.core.errors import CorruptRecord, DomainError, ServiceUnavailable


class Database:
    """The SQLite file at ``path`` with its layout (``layout``: statements separated by ``;``,
    each safe to run again; ``version``: the layout's number, a newer file is refused)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        layout: str,
        version: int,
        *,
        what: str,
        busy_timeout_seconds: float = 10.0,
        on_integrity: Callable[[sqlite3.IntegrityError], DomainError] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.what = what
        self._on_integrity = on_integrity
        self._busy_timeout = busy_timeout_seconds
        self._pool: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        with self.write() as conn:
            (found,) = conn.execute("PRAGMA user_version").fetchone()
            if found > version:
                raise ServiceUnavailable(
                    f"the {what} {self.path} has layout {found}; this service reads layout "
                    f"{version}: upgrade the service"
                )
            for statement in layout.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(version)}")

    def close(self) -> None:
        """Close the idle connections (one in use is closed when it comes back)."""
        with self._pool_lock:
            pool, self._pool = self._pool, []
            self._closed = True
        for conn in pool:
            conn.close()

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit: each statement reads one consistent snapshot."""
        with self._connection() as conn:
            yield conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A transaction that holds the write lock from its first statement; committed when the
        block ends, rolled back when it raises."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # ---------------------------------------------------------------- plumbing

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit: transactions are opened explicitly
            check_same_thread=False,  # the pool lends a connection to one thread at a time
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._translated():
            with self._pool_lock:
                if self._pid != os.getpid():
                    # A forked child must not use its parent's connections: forget them.
                    self._pool, self._pid = [], os.getpid()
                conn = self._pool.pop() if self._pool else None
            if conn is None:
                conn = self._open()
            reusable = False
            try:
                yield conn
                reusable = True
            except DomainError:
                reusable = not conn.in_transaction
                raise
            finally:
                with self._pool_lock:
                    if reusable and not self._closed and self._pid == os.getpid():
                        self._pool.append(conn)
                    else:
                        conn.close()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Let only domain errors out."""
        try:
            yield
        except DomainError:
            raise
        except sqlite3.IntegrityError as exc:
            # The checks inside the write transaction come first; this is the layout's backstop.
            if self._on_integrity is not None:
                raise self._on_integrity(exc) from None
            raise ServiceUnavailable(
                f"the {self.what} {self.path} refused the write ({exc})"
            ) from None
        except sqlite3.Error as exc:
            name = getattr(exc, "sqlite_errorname", "") or ""
            text = str(exc)
            if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "decode" in text:
                raise CorruptRecord(
                    f"the {self.what} {self.path} is damaged: {text:.200}"
                ) from None
            if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
                raise ServiceUnavailable(
                    f"the {self.what} {self.path} is busy (locked by another writer); try again"
                ) from None
            raise ServiceUnavailable(
                f"the {self.what} {self.path} is not usable: "
                f"{name or type(exc).__name__}: {text:.200}"
            ) from None
