"""The Keycloak TokenVerifier over the local issuer, under the TokenVerifier contract.

``LocalTokenIssuer`` keeps its key in a temporary OBP_HOME; a small loopback HTTP server serves
its discovery document and JWKS under Keycloak's paths, and the production verifier finds
everything through discovery, as it does against a real realm. So the tokens of the one-machine
family pass through the same authorization code as Keycloak's.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obp_workflow.adapters.keycloak.verifier import KeycloakSettings, KeycloakTokenVerifier
from obp_workflow.adapters.local.token_issuer import CLIENT_ID, LocalTokenIssuer, issuer_url
from obp_workflow.core.identity import Principal
from obp_workflow.ports.identity import TokenVerifier
from tests.contract.harness_keycloak import group_path

if TYPE_CHECKING:
    from tests.contract.harness import TokenVerifierHarness


class _Handler(BaseHTTPRequestHandler):
    server: IssuerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        issuer = self.server.issuer
        routes = {issuer.discovery_path: issuer.discovery, issuer.jwks_path: issuer.jwks}
        route = routes.get(self.path.split("?", 1)[0])
        self.server.requests.append(self.path)
        status, body = (200, route()) if route is not None else (404, {"error": "not found"})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class IssuerServer(ThreadingHTTPServer):
    """The local issuer's two documents over HTTP on 127.0.0.1 (a free port)."""

    daemon_threads = True

    def __init__(self, home: Path, **issuer: Any) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.home = home
        self.requests: list[str] = []
        self.issuer = LocalTokenIssuer(home, issuer_url("127.0.0.1", self.server_port), **issuer)
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


class LocalIssuerTokenVerifierHarness:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="obp-home-"))
        self.server = IssuerServer(self.home)
        self.keycloak = KeycloakTokenVerifier(
            KeycloakSettings(issuer=self.server.issuer.issuer, authorized_parties=(CLIENT_ID,))
        )
        self.verifier: TokenVerifier = self.keycloak

    def issue(self, principal: Principal) -> str:
        return self.server.issuer.mint(
            subject=principal.subject,
            username=principal.username,
            groups=sorted(group_path(m) for m in principal.memberships),
        )

    def close(self) -> None:
        self.keycloak.close()
        self.server.close()
        shutil.rmtree(self.home, ignore_errors=True)


if TYPE_CHECKING:  # mypy proves the harness implements the harness protocol
    _verifiers: list[Callable[[], TokenVerifierHarness]] = [LocalIssuerTokenVerifierHarness]
