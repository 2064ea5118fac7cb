"""The service's own access token, from Keycloak's client-credentials grant.

Nexus is called with the service's identity, never with a caller's token (a caller's token
expires during a long run, and the graph would record the wrong agent). ``ServiceTokenProvider`` is
the ``token_provider`` the Nexus adapter calls before each request:

- it asks the realm's token endpoint (``{issuer}/protocol/openid-connect/token``, or the one
  configured) for a token of the service account: ``grant_type=client_credentials``, the client
  authenticated with HTTP Basic (``client_secret_basic``); the client secret is read from the
  SecretStore at each fetch, so a rotated secret is picked up without a restart;
- the token is reused until ``refresh_margin_seconds`` before its ``expires_in``; one fetch at a
  time (concurrent callers wait for it and share its token);
- ``invalidate()`` forgets the token (a resource server refused it: revoked, or the realm's keys
  rotated), so the next call fetches a new one.

Failures are ``ServiceUnavailable`` naming what happened (the realm refused the client, or did
not answer), never the secret or a token: errors are not chained to httpx's (whose request holds
the credentials), and nothing is logged above DEBUG.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from obp_workflow.core.cluster import SecretRef
from obp_workflow.core.errors import ServiceUnavailable
from obp_workflow.ports.secrets import SecretStore

_MAX_TOKEN_RESPONSE_BYTES = 64 * 1024


@dataclass(frozen=True)
class ClientCredentials:
    """Which Keycloak client the service is, and where its secret is kept."""

    #: The realm's token endpoint, e.g. ``https://HOST/realms/REALM/protocol/openid-connect/token``.
    token_url: str
    client_id: str
    #: The client secret in the SecretStore (a Secrets Manager name or ARN).
    client_secret: SecretRef
    scope: str | None = None
    refresh_margin_seconds: float = 30.0
    timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        if not self.token_url.startswith(("https://", "http://")):
            raise ValueError(f"invalid token endpoint {self.token_url!r}")
        if not self.client_id:
            raise ValueError("a client id is required")
        if self.refresh_margin_seconds < 0 or self.timeout_seconds <= 0:
            raise ValueError("the refresh margin must not be negative, the timeout positive")

    @staticmethod
    def token_url_of(issuer: str) -> str:
        """Keycloak's token endpoint of the realm ``issuer`` (``https://HOST/realms/REALM``)."""
        return issuer.rstrip("/") + "/protocol/openid-connect/token"


class ServiceTokenProvider:
    """``Callable[[], str]``: the service account's current access token."""

    def __init__(
        self,
        credentials: ClientCredentials,
        secrets: SecretStore,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.credentials = credentials
        self._secrets = secrets
        self._clock = clock
        self._client = httpx.Client(
            transport=transport, timeout=credentials.timeout_seconds, follow_redirects=False
        )
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.fetches = 0

    def __call__(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._token, lifetime = self._fetch()
                margin = min(self.credentials.refresh_margin_seconds, lifetime / 2)
                self._renew_at = self._clock() + lifetime - margin
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def close(self) -> None:
        self._client.close()

    def _fetch(self) -> tuple[str, float]:
        c = self.credentials
        secret = self._secrets.get(c.client_secret).reveal()
        basic = base64.b64encode(f"{quote(c.client_id)}:{quote(secret)}".encode()).decode()
        form = {"grant_type": "client_credentials"}
        if c.scope:
            form["scope"] = c.scope
        self.fetches += 1
        try:
            response = self._client.post(
                c.token_url,
                data=form,
                headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
            )
            content = response.read()
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(
                f"Keycloak did not answer the service's token request ({type(exc).__name__})"
            ) from None
        body = _json_object(content)
        if response.status_code != 200:
            error = str(body.get("error") or f"HTTP {response.status_code}")[:100]
            if response.status_code in (400, 401, 403):
                raise ServiceUnavailable(
                    f"Keycloak refused the service's client {c.client_id!r} ({error}): check "
                    "its client id, its secret and that its service account is enabled"
                )
            raise ServiceUnavailable(
                f"Keycloak failed the service's token request (HTTP {response.status_code})"
            )
        token, lifetime = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token or not isinstance(lifetime, int | float):
            raise ServiceUnavailable("Keycloak answered the token request without a token")
        if str(body.get("token_type", "bearer")).lower() != "bearer":
            raise ServiceUnavailable("Keycloak answered with a token that is not a bearer token")
        return token, max(0.0, float(lifetime))


def _json_object(content: bytes) -> dict[str, Any]:
    if len(content) > _MAX_TOKEN_RESPONSE_BYTES:
        return {}
    try:
        value = json.loads(content)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
