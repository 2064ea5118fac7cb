"""API Gateway on a laptop: real HTTP in, the authorizer and the API Lambda behind it.

:class:`LocalGateway` is uvicorn (HTTP/1.1 over h11, ``protocol.py``) serving the ASGI
application of ``app.py``, which builds the REST API's proxy events and emulates the authorizer
(``events.py``), within explicit limits (``limits.py``). Binds 127.0.0.1 unless told otherwise.

The socket is bound and listening as soon as the gateway is made, so its URL is known (port 0:
any free port); :meth:`LocalGateway.serve_forever` serves until :meth:`LocalGateway.shutdown`
(from another thread) or SIGINT/SIGTERM (on the main thread), :meth:`LocalGateway.start` does so
on a background thread, :meth:`LocalGateway.stop` shuts down and closes.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import uvicorn

from .app import ExtraRoute, GatewayApp
from .events import AuthorizerCache
from .limits import DEFAULT_LIMITS, ServerLimits
from .protocol import protocol_for

if TYPE_CHECKING:
    from obp_workflow.entrypoints.composition.root import Service

log = logging.getLogger("obp_workflow.local_gateway")

__all__ = ["ExtraRoute", "LocalGateway", "ServerLimits", "make_server", "serve"]


class LocalGateway:
    """The API and its authorizer behind uvicorn, on one bound socket."""

    def __init__(
        self,
        address: tuple[str, int],
        container: Service,
        *,
        stage: str = "local",
        authorizer_ttl: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        limits: ServerLimits = DEFAULT_LIMITS,
        extra_routes: Mapping[str, ExtraRoute] | None = None,
    ) -> None:
        self.container = container
        self.stage = stage
        self.limits = limits
        self.authorizer = AuthorizerCache(container.token_verifier, ttl=authorizer_ttl, clock=clock)
        self.socket = socket.create_server(
            address, family=_family(address[0]), backlog=limits.backlog
        )
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        self._executor = ThreadPoolExecutor(
            limits.handler_threads, thread_name_prefix="obp-local-gateway"
        )
        app = GatewayApp(
            container,
            self.authorizer,
            self._executor,
            stage=stage,
            limits=limits,
            extra_routes=extra_routes,
        )
        config = uvicorn.Config(
            app,
            http=protocol_for(limits),
            ws="none",
            lifespan="off",
            interface="asgi3",
            loop="asyncio",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            backlog=limits.backlog,
            timeout_keep_alive=limits.keep_alive_seconds,
            h11_max_incomplete_event_size=limits.max_head_bytes,
            timeout_graceful_shutdown=limits.graceful_shutdown_seconds,
        )
        self._server = uvicorn.Server(config)
        self._serving = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def authorizer_calls(self) -> int:
        """How often the authorizer ran (a cached answer is not a call)."""
        return self.authorizer.calls

    def busy(self) -> int:
        """Requests in progress."""
        return len(self._server.server_state.tasks)

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` or, on the main thread, SIGINT or SIGTERM."""
        with self._serving:
            if self._server.should_exit:
                return
            self._server.run(sockets=[self.socket])

    def shutdown(self) -> None:
        """Stop serving: finish the requests in progress (within the graceful timeout) and
        return once :meth:`serve_forever` has returned."""
        self._server.should_exit = True
        with self._serving:
            pass

    def server_close(self) -> None:
        """Release the socket and the handler threads."""
        self.socket.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def start(self) -> LocalGateway:
        """Serve on a background thread; returns once the server accepts connections."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="obp-local-gateway", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local gateway did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> LocalGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def make_server(
    host: str = "127.0.0.1", port: int = 0, container: Service | None = None, **options: Any
) -> LocalGateway:
    """A gateway bound to ``host:port`` (0: any free port); serve it with ``serve_forever``
    or ``start``."""
    if container is None:
        from obp_workflow.entrypoints.composition.root import build
        from obp_workflow.entrypoints.composition.settings import load_settings

        container = build(load_settings())
    return LocalGateway((host, port), container, **options)


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    container: Service | None = None,
    *,
    extra_routes: Mapping[str, ExtraRoute] | None = None,
) -> None:
    """Serve the API until interrupted."""
    server = make_server(host, port, container, extra_routes=extra_routes)
    log.warning("obp-workflow API on %s/v1 (local gateway, stage %s)", server.url, server.stage)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
