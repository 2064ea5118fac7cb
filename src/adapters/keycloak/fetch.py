"""JSON documents from a Keycloak realm over HTTP(S), on the standard library's ``http.client``.

The token verifier reads three documents (discovery, JWKS, userinfo), rarely, and each small;
a full HTTP client would cost the Lambda authorizer's cold start more than everything else it
imports. This one does only what those reads need:

- ``GET`` with ``Accept: application/json`` (and the bearer token, for userinfo); redirects are
  not followed, any status but 200 is a failure;
- a connect timeout (TCP and TLS handshake) and a read timeout (each wait for the server);
- a body larger than the limit is a failure, found before it is all read;
- TLS verified against the system's trust store (``ssl.create_default_context``, which honours
  ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``);
- connections kept alive per origin (a few idle ones, each for a few seconds), so that
  discovery, JWKS and userinfo share one handshake; a kept-alive connection the server has
  closed meanwhile is replaced once, transparently (every request is a ``GET``: repeating it is
  harmless). An older idle connection is closed rather than used: a peer or a NAT may have
  dropped it without a word, and a request on it would wait for the read timeout.

Every failure is a :class:`FetchFailed` whose message names the URL and the kind of failure,
never a header value or a body. Thread-safe.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from typing import Any
from urllib.parse import urlsplit

#: A kept-alive connection whose server has left fails this way on its next request.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_Origin = tuple[str, str, int]


class FetchFailed(Exception):
    """A document could not be fetched or read; the reason holds no secret."""


class JsonClient:
    """``GET`` small JSON objects; see the module's documentation for the rules."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_bytes: int,
        max_idle_per_origin: int = 4,
        keepalive_seconds: float = 5.0,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_bytes = max_bytes
        self._max_idle = max_idle_per_origin
        self._keepalive = keepalive_seconds
        #: Idle connections by origin, each with when it became idle (monotonic seconds).
        self._idle: dict[_Origin, list[tuple[http.client.HTTPConnection, float]]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def get_json(self, url: str, *, bearer: str | None = None) -> dict[str, Any]:
        """The JSON object at ``url``; :class:`FetchFailed` otherwise."""
        origin, target = _split(url)
        headers = {"Accept": "application/json"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        for attempt in (1, 2):
            connection, reused = self._take(origin, fresh=attempt == 2)
            try:
                body = self._exchange(connection, origin, target, headers, reused=reused, url=url)
            except _STALE as exc:
                connection.close()
                if reused and attempt == 1:
                    continue  # the server closed the idle connection: once more, on a new one
                raise FetchFailed(f"{type(exc).__name__} from {url}") from None
            except (http.client.HTTPException, OSError, ValueError) as exc:
                connection.close()
                raise FetchFailed(f"{type(exc).__name__} from {url}") from None
            except BaseException:
                connection.close()
                raise
            break
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise FetchFailed(f"no JSON from {url}") from None
        if not isinstance(document, dict):
            raise FetchFailed(f"no JSON object from {url}")
        return document

    def close(self) -> None:
        """Close the idle connections (the client stays usable: it connects again)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection, _ in connections:
                connection.close()

    # ------------------------------------------------------------------ connections

    def _take(
        self, origin: _Origin, *, fresh: bool = False
    ) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection to ``origin`` (reused: True) unless ``fresh``, or a new one, not
        yet connected."""
        expired: list[http.client.HTTPConnection] = []
        reusable = None
        with self._lock:
            idle = self._idle.get(origin, [])
            oldest = time.monotonic() - self._keepalive
            while idle:
                connection, since = idle.pop()
                if fresh or since < oldest:
                    expired.append(connection)
                else:
                    reusable = connection
                    break
        for connection in expired:
            connection.close()
        if reusable is not None:
            return reusable, True
        scheme, host, port = origin
        if scheme == "https":
            return (
                http.client.HTTPSConnection(
                    host, port, timeout=self._connect_timeout, context=self._tls_context()
                ),
                False,
            )
        return http.client.HTTPConnection(host, port, timeout=self._connect_timeout), False

    def _give_back(self, origin: _Origin, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < self._max_idle:
                idle.append((connection, time.monotonic()))
                return
        connection.close()

    def _tls_context(self) -> ssl.SSLContext:
        with self._lock:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            return self._tls

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        origin: _Origin,
        target: str,
        headers: dict[str, str],
        *,
        reused: bool,
        url: str,
    ) -> bytes:
        """One request and its whole body; the connection is kept when both ends allow it."""
        if not reused:
            connection.connect()  # within the connect timeout, TLS handshake included
            connection.sock.settimeout(self._read_timeout)
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        limit = self._max_bytes
        if response.status != 200:
            connection.close()
            raise FetchFailed(f"HTTP {response.status} from {url}")
        declared = response.getheader("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            connection.close()
            raise FetchFailed(f"more than {limit} bytes from {url}")
        body = bytearray()
        while True:
            chunk = response.read(min(64 * 1024, limit + 1 - len(body)))
            if not chunk:
                break
            body += chunk
            if len(body) > limit:
                connection.close()
                raise FetchFailed(f"more than {limit} bytes from {url}")
        if response.will_close:
            connection.close()
        else:
            self._give_back(origin, connection)
        return bytes(body)


def _split(url: str) -> tuple[_Origin, str]:
    """(scheme, host, port) and the request target of an http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchFailed(f"InvalidURL from {url}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise FetchFailed(f"InvalidURL from {url}")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return (scheme, parts.hostname, port or (443 if scheme == "https" else 80)), target
