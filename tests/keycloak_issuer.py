"""A Keycloak-shaped OpenID issuer for the tests: a real HTTP server on loopback.

It serves what a token verifier reads from a Keycloak realm, under Keycloak's own paths:

- ``/realms/{realm}/.well-known/openid-configuration`` (discovery; Keycloak's list of signing
  algorithms, HMAC ones included, as Keycloak advertises them);
- ``/realms/{realm}/protocol/openid-connect/certs`` (the JWKS: ``kid``, ``alg``, ``use``; like
  Keycloak it also publishes an encryption key, ``use: enc``);
- ``/realms/{realm}/protocol/openid-connect/userinfo`` (the groups of the token's subject, from
  the issuer's own directory, after checking the bearer token);
- ``POST /realms/{realm}/protocol/openid-connect/token`` with ``grant_type=client_credentials``
  (a confidential client's service account, ``add_client``; the client authenticates with HTTP
  Basic or ``client_id``/``client_secret`` in the form, as Keycloak accepts both): Keycloak's
  token response, or its ``invalid_client`` / ``unsupported_grant_type`` errors.

It mints RS256 access tokens with Keycloak's claims and chosen lifetimes, rotates keys (a new
``kid``; the old key kept or dropped), counts the requests of each endpoint and the connections
accepted, can close its kept-alive connections, and can be made to fail (an HTTP status, a
delay). Use it as a context manager, or call ``close()``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt import api_jws
from jwt.algorithms import RSAAlgorithm

#: What Keycloak 24 advertises in ``id_token_signing_alg_values_supported``.
KEYCLOAK_ALGORITHMS = (
    "PS384",
    "ES384",
    "RS384",
    "HS256",
    "HS512",
    "ES256",
    "RS256",
    "HS384",
    "ES512",
    "PS256",
    "PS512",
    "RS512",
)
CLIENT_ID = "obp-web"


@dataclass(frozen=True)
class SigningKey:
    """An RSA key pair with its key id, as a realm's key provider holds it."""

    kid: str
    private: rsa.RSAPrivateKey
    alg: str = "RS256"
    use: str = "sig"

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, alg=self.alg, use=self.use)
        return jwk

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


#: Generating a 2048-bit RSA key takes ~0.1 s: the process cycles through this many, so any
#: that many consecutive draws are distinct key material (a test draws a handful).
KEY_POOL_SIZE = 32
_pool: list[rsa.RSAPrivateKey] = []
_draws = itertools.count()
_pool_lock = threading.Lock()


def _private_key() -> rsa.RSAPrivateKey:
    with _pool_lock:
        n = next(_draws) % KEY_POOL_SIZE
        if n == len(_pool):
            _pool.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return _pool[n]


def new_key(kid: str | None = None, *, alg: str = "RS256", use: str = "sig") -> SigningKey:
    """A 2048-bit RSA key other than the last ``KEY_POOL_SIZE - 1`` drawn, with a new kid
    (random, like Keycloak's) unless ``kid`` is given."""
    return SigningKey(kid or uuid.uuid4().hex[:22], _private_key(), alg, use)


class _Server(ThreadingHTTPServer):
    """Tracks its open connections, so that closing the realm cuts kept-alive clients too."""

    daemon_threads = True
    issuer: KeycloakIssuer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.accepted = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        with self.connections_lock:
            self.connections.add(connection)
            self.accepted += 1
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # the client left first (a test's timeout, a cut connection): expected
        super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms stall

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the tests count requests instead

    def do_GET(self) -> None:
        issuer = self.server.issuer
        prefix = f"/realms/{issuer.realm}"
        path = self.path.split("?", 1)[0]
        routes: dict[str, Callable[[], tuple[int, Any]]] = {
            f"{prefix}/.well-known/openid-configuration": issuer._discovery,
            f"{prefix}/protocol/openid-connect/certs": issuer._certs,
            f"{prefix}/protocol/openid-connect/userinfo": lambda: issuer._userinfo(
                self.headers.get("Authorization", "")
            ),
        }
        route = routes.get(path)
        if route is None:
            self._send(404, {"error": "not found"})
            return
        status, body = route()
        self._send(status, body)

    def do_POST(self) -> None:
        issuer = self.server.issuer
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("latin-1"))
        if self.path.split("?", 1)[0] != f"/realms/{issuer.realm}/protocol/openid-connect/token":
            self._send(404, {"error": "not found"})
            return
        fields = {name: values[0] for name, values in form.items() if values}
        status, body = issuer._token(self.headers.get("Authorization", ""), fields)
        self._send(status, body)

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer error="invalid_token"')
        self.end_headers()
        self.wfile.write(data)


class KeycloakIssuer:
    """One realm of a fake Keycloak, listening on 127.0.0.1 (a free port).

    ``clock`` (seconds since the epoch) dates the minted tokens and checks their expiry at
    ``/userinfo``. Counters: ``requests["discovery" | "certs" | "userinfo"]``.
    Faults: ``status[endpoint] = 503`` answers that endpoint with that status; ``delay[endpoint]``
    sleeps that many seconds before answering.
    """

    def __init__(
        self,
        realm: str = "obp",
        *,
        client_id: str = CLIENT_ID,
        clock: Callable[[], float] = time.time,
        advertised_algorithms: Iterable[str] = KEYCLOAK_ALGORITHMS,
    ) -> None:
        self.realm = realm
        self.client_id = client_id
        self.clock = clock
        self.advertised_algorithms = list(advertised_algorithms)
        self.active = new_key()
        self.keys: list[SigningKey] = [self.active]
        self.encryption_key = new_key(alg="RSA-OAEP", use="enc")
        #: Confidential clients with a service account: client id -> (secret, token lifetime).
        self.clients: dict[str, tuple[str, float]] = {}
        #: The directory: groups of each subject, as /userinfo reports them.
        self.directory: dict[str, list[str]] = {}
        self.discovery_overrides: dict[str, Any] = {}
        self.userinfo_overrides: dict[str, Any] = {}
        self.requests: Counter[str] = Counter()
        self.status: dict[str, int] = {}
        self.delay: dict[str, float] = {}
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.issuer = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"keycloak-{realm}",
            daemon=True,
        )
        self._thread.start()
        self._closed = False

    # ------------------------------------------------------------------ addresses

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/{self.realm}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    @property
    def userinfo_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/userinfo"

    @property
    def jwks_fetches(self) -> int:
        return self.requests["certs"]

    @property
    def connections(self) -> int:
        """Connections accepted so far (a client keeping its connection alive opens one)."""
        return self._server.accepted

    def drop_connections(self) -> None:
        """Close every open connection, as a server does with idle kept-alive ones."""
        self._server.drop_connections()

    # ------------------------------------------------------------------ keys and tokens

    def rotate(self, *, keep_old: bool = True) -> SigningKey:
        """A new active key (new kid); the old ones stay published unless ``keep_old=False``."""
        key = new_key()
        with self._lock:
            self.keys = [*self.keys, key] if keep_old else [key]
            self.active = key
        return key

    def add_client(self, client_id: str, secret: str, *, lifetime: float = 300) -> None:
        """A confidential client whose service account gets tokens of ``lifetime`` seconds."""
        self.clients[client_id] = (secret, lifetime)

    @staticmethod
    def service_account(client_id: str) -> str:
        """The subject of a client's service account (stable per client)."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"service-account/{client_id}"))

    def set_groups(self, subject: str, groups: Iterable[str]) -> None:
        self.directory[subject] = list(groups)

    def claims(
        self,
        subject: str = "3f1c2a9e-0000-4000-8000-0000000000b0",
        *,
        username: str | None = "bob",
        groups: Iterable[str] | None = None,
        lifetime: float = 300,
        issued_at: float | None = None,
        not_before: float | None = None,
        audience: str | list[str] | None = "account",
        azp: str | None = None,
        extra: Mapping[str, Any] | None = None,
        drop: Iterable[str] = (),
    ) -> dict[str, Any]:
        """The claims of a Keycloak access token (before ``extra`` and ``drop`` are applied)."""
        now = self.clock() if issued_at is None else issued_at
        claims: dict[str, Any] = {
            "exp": int(now + lifetime),
            "iat": int(now),
            "auth_time": int(now) - 5,
            "jti": str(uuid.uuid4()),
            "iss": self.issuer,
            "aud": audience,
            "sub": subject,
            "typ": "Bearer",
            "azp": azp or self.client_id,
            "sid": str(uuid.uuid4()),
            "acr": "1",
            "allowed-origins": ["https://www.openbraininstitute.org"],
            "realm_access": {
                "roles": [f"default-roles-{self.realm}", "offline_access", "uma_authorization"]
            },
            "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
            "scope": "openid profile email groups",
            "email_verified": True,
            "name": (username or "anonymous").title(),
            "preferred_username": username,
            "email": f"{username}@example.org",
        }
        if audience is None:
            del claims["aud"]
        if username is None:
            del claims["preferred_username"]
        if groups is not None:
            claims["groups"] = list(groups)
        if not_before is not None:
            claims["nbf"] = int(not_before)
        claims.update(extra or {})
        for name in drop:
            claims.pop(name, None)
        return claims

    def sign(
        self,
        claims: Mapping[str, Any] | bytes,
        *,
        key: SigningKey | None = None,
        algorithm: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A compact JWS of ``claims`` (or of raw payload bytes) with ``kid`` in the header."""
        key = key or self.active
        header: dict[str, Any] = {"kid": key.kid, "typ": "JWT", **(headers or {})}
        if isinstance(claims, bytes):
            return api_jws.encode(
                claims, key.private, algorithm=algorithm or key.alg, headers=header
            )
        return jwt.encode(dict(claims), key.private, algorithm=algorithm or key.alg, headers=header)

    def mint(
        self,
        subject: str = "3f1c2a9e-0000-4000-8000-0000000000b0",
        *,
        key: SigningKey | None = None,
        algorithm: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A signed access token; keyword arguments as for ``claims()``."""
        return self.sign(
            self.claims(subject, **claims), key=key, algorithm=algorithm, headers=headers
        )

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._server.shutdown()
            self._server.server_close()
            self._server.drop_connections()
            self._thread.join(5)

    def __enter__(self) -> KeycloakIssuer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ endpoints

    def _enter(self, endpoint: str) -> int | None:
        with self._lock:
            self.requests[endpoint] += 1
        pause = self.delay.get(endpoint)
        if pause:
            time.sleep(pause)
        return self.status.get(endpoint)

    def _discovery(self) -> tuple[int, Any]:
        failing = self._enter("discovery")
        if failing:
            return failing, {"error": "unavailable"}
        base = f"{self.issuer}/protocol/openid-connect"
        document = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{base}/auth",
            "token_endpoint": f"{base}/token",
            "introspection_endpoint": f"{base}/token/introspect",
            "userinfo_endpoint": f"{base}/userinfo",
            "end_session_endpoint": f"{base}/logout",
            "jwks_uri": f"{base}/certs",
            "grant_types_supported": [
                "authorization_code",
                "refresh_token",
                "password",
                "client_credentials",
            ],
            "response_types_supported": ["code", "none", "id_token", "token"],
            "subject_types_supported": ["public", "pairwise"],
            "id_token_signing_alg_values_supported": self.advertised_algorithms,
            "userinfo_signing_alg_values_supported": [*self.advertised_algorithms, "none"],
            "scopes_supported": ["openid", "profile", "email", "groups"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "preferred_username"],
            **self.discovery_overrides,
        }
        return 200, document

    def _certs(self) -> tuple[int, Any]:
        failing = self._enter("certs")
        if failing:
            return failing, {"error": "unavailable"}
        with self._lock:
            keys = [key.public_jwk() for key in self.keys]
        return 200, {"keys": [*keys, self.encryption_key.public_jwk()]}

    def _userinfo(self, authorization: str) -> tuple[int, Any]:
        failing = self._enter("userinfo")
        if failing:
            return failing, {"error": "unavailable"}
        scheme, _, token = authorization.partition(" ")
        claims = self._check(token) if scheme.lower() == "bearer" else None
        if claims is None:
            return 401, {"error": "invalid_token"}
        subject = claims["sub"]
        info = {
            "sub": subject,
            "email_verified": True,
            "preferred_username": claims.get("preferred_username"),
            "email": claims.get("email"),
            "groups": self.directory.get(subject, []),
            **self.userinfo_overrides,
        }
        return 200, info

    def _token(self, authorization: str, form: Mapping[str, str]) -> tuple[int, Any]:
        failing = self._enter("token")
        if failing:
            return failing, {"error": "unavailable"}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except (ValueError, UnicodeDecodeError):
                decoded = ""
            user, _, password = decoded.partition(":")
            client_id = urllib.parse.unquote(user)
            secret = urllib.parse.unquote(password)
        known = self.clients.get(client_id or "")
        if known is None or not secret or secret != known[0]:
            return 401, {
                "error": "invalid_client",
                "error_description": "Invalid client or Invalid client credentials",
            }
        if form.get("grant_type") != "client_credentials":
            return 400, {
                "error": "unsupported_grant_type",
                "error_description": "Unsupported grant_type",
            }
        lifetime = known[1]
        token = self.mint(
            self.service_account(client_id or ""),
            username=f"service-account-{client_id}",
            azp=client_id,
            lifetime=lifetime,
        )
        return 200, {
            "access_token": token,
            "expires_in": int(lifetime),
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": "profile email",
        }

    def check(self, token: str) -> dict[str, Any] | None:
        """The claims of ``token`` if it is one of this realm's valid tokens, else None (what
        a resource server that trusts this realm, e.g. Nexus, decides)."""
        return self._check(token)

    def _check(self, token: str) -> dict[str, Any] | None:
        """The claims of one of this realm's valid tokens, or None (as Keycloak's userinfo)."""
        with self._lock:
            keys = {key.kid: key for key in self.keys}
        try:
            key = keys[jwt.get_unverified_header(token)["kid"]]
            claims: dict[str, Any] = jwt.decode(
                token,
                key.private.public_key(),
                algorithms=[key.alg],
                options={"verify_exp": False, "verify_aud": False, "verify_iat": False},
                issuer=self.issuer,
            )
        except (jwt.PyJWTError, KeyError):
            return None
        if claims.get("exp", 0) <= self.clock():
            return None
        return claims
