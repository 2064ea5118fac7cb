"""The worker's own luigid: Luigi's central scheduler, held in the worker's process, and
luigid's HTTP server for it on loopback (the visualiser that shows each run's steps, and the
scheduler's RPC API).

The worker's builds call the scheduler directly (``scheduler``), not over HTTP. Measured with 200
runs at once (docs/benchmarks.md, "200 jobs submitted at once"): with luigid as a process of its
own, every build's RPCs (a new HTTP connection per build, JSON both ways, about a dozen calls)
cost the worker and luigid together about 60 ms of CPU per run, two thirds of the service's
whole cost. In the process the same calls cost microseconds. The server's thread and the build
threads share the scheduler through one lock: luigid serves one request at a time, and Luigi's
scheduler is not safe to call from two threads at once.

luigid holds no state the service relies on (every step's ``complete()`` reads the run
repository): nothing is saved or loaded. Its configuration is what short builds need
(``docs/architecture.md``, "The workflow container"): a task built again right after it ran
must be looked at again (``stable_done_cooldown_secs = 0``), a failed step may be retried by the
next build at once (``retry_delay``), and work requests do not prune (the server prunes every
minute, as luigid does).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from typing import Any

import luigi.scheduler
import luigi.server
import tornado.httpserver
import tornado.ioloop
import tornado.netutil

SCHEDULER = {
    "stable_done_cooldown_secs": 0,
    "retry_delay": 1,
    "remove_delay": 120,
    "worker_disconnect_delay": 30,
    "record_task_history": False,
    "prune_on_get_work": False,
}
PRUNE_EVERY_MS = 60_000


class LuigidFailed(RuntimeError):
    pass


class SerializedScheduler:
    """Luigi's scheduler, one call at a time: every method runs under one lock."""

    def __init__(self, scheduler: luigi.scheduler.Scheduler) -> None:
        self._scheduler = scheduler
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._scheduler, name)
        if not callable(attribute):
            return attribute

        def serialized(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attribute(*args, **kwargs)

        return serialized


class Luigid:
    """The central scheduler and its server on 127.0.0.1; ``port`` 0 picks a free one."""

    def __init__(self, port: int = 8082) -> None:
        self.requested_port = port
        self.port = 0
        self.scheduler = SerializedScheduler(luigi.scheduler.Scheduler(**SCHEDULER))
        self.thread: threading.Thread | None = None
        self._stop: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Luigid:
        try:
            sockets = tornado.netutil.bind_sockets(self.requested_port, address="127.0.0.1")
        except OSError as exc:
            raise LuigidFailed(
                f"luigid cannot listen on 127.0.0.1:{self.requested_port}: {exc.strerror}"
            ) from None
        self.port = next(s.getsockname()[1] for s in sockets if s.family == socket.AF_INET)
        ready = threading.Event()
        failed: list[Exception] = []
        self.thread = threading.Thread(
            target=self._serve, args=(sockets, ready, failed), name="luigid", daemon=True
        )
        self.thread.start()
        ready.wait()
        if failed:
            self.stop()
            raise LuigidFailed(f"luigid's server did not start: {failed[0]}")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None

    def _serve(
        self, sockets: list[socket.socket], ready: threading.Event, failed: list[Exception]
    ) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            server = tornado.httpserver.HTTPServer(luigi.server.app(self.scheduler))
            server.add_sockets(sockets)
        except Exception as exc:  # said by start(), which waits for this thread to be ready
            failed.append(exc)
            for bound in sockets:
                bound.close()
            loop.close()
            ready.set()
            return
        pruner = tornado.ioloop.PeriodicCallback(self.scheduler.prune, PRUNE_EVERY_MS)
        pruner.start()

        def stop() -> None:
            loop.call_soon_threadsafe(loop.stop)

        self._stop = stop
        ready.set()
        try:
            loop.run_forever()
        finally:
            pruner.stop()
            server.stop()
            loop.run_until_complete(server.close_all_connections())
            loop.close()
