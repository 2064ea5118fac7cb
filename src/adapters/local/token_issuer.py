"""A Keycloak-shaped OpenID issuer on one machine: the realm the local family's callers log in to.

It holds one RSA signing key, made on first use in ``$OBP_HOME/issuer/signing-key.pem`` (mode
0600 in a folder of mode 0700; written whole under a temporary name and published with
``link(2)``, so processes racing to make it agree on one key). Its ``kid`` is the key's RFC 7638
thumbprint: stable across restarts, and new when the key file is replaced.

Tokens are shaped like the platform's Keycloak access tokens (RS256, ``kid`` in the header;
``iss``, ``aud``, ``azp``, ``sub``, ``exp``, ``iat``, ``typ: Bearer``, ``preferred_username`` and
``groups`` such as ``/proj/<vlab>/<project>/member``), so the production
``KeycloakTokenVerifier`` checks them exactly as it checks Keycloak's. The documents it reads are
offered as dicts for an HTTP server to serve, under Keycloak's paths: the discovery document at
``<issuer>/.well-known/openid-configuration`` and the JWKS at
``<issuer>/protocol/openid-connect/certs``, the issuer being ``http://HOST:PORT/realms/<realm>``.

Neither the key nor a token is ever logged or put in an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .private_files import create_exclusive, private_folder, read_private

DEFAULT_REALM = "obp"
#: The client the local tokens are issued to (their ``azp``): the verifier's authorized party.
CLIENT_ID = "obp-workflow-local"
#: Their ``aud``, as Keycloak's default audience.
AUDIENCE = "account"
ALGORITHM = "RS256"
KEY_FOLDER = "issuer"
#: Where, below the issuer, Keycloak serves a realm's discovery document and its keys.
DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/protocol/openid-connect/certs"
KEY_FILE = "signing-key.pem"
MAX_LIFETIME_SECONDS = 30 * 24 * 3600

_REALM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_GROUP = re.compile(r"/[^\s\x00-\x1f\x7f]{1,510}")


def issuer_url(host: str, port: int, realm: str = DEFAULT_REALM) -> str:
    """The issuer of a realm served at ``host:port``, as Keycloak spells it."""
    if not _REALM.fullmatch(realm):
        raise ValueError(f"invalid realm name {realm!r}")
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port}")
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{shown}:{port}{realm_path(realm)}"


def realm_path(realm: str = DEFAULT_REALM) -> str:
    """The URL path of a realm (its issuer's path), as Keycloak spells it."""
    return f"/realms/{realm}"


#: The issuer ``serve`` publishes at its default address: the one local tokens are for unless
#: told otherwise.
DEFAULT_ISSUER = issuer_url("127.0.0.1", 8080)


class LocalTokenIssuer:
    """Mints access tokens for the realm at ``issuer`` with the key kept under ``home``.

    ``clock`` (seconds since the epoch) dates the tokens. Thread-safe: nothing changes after
    construction.
    """

    def __init__(
        self,
        home: Path,
        issuer: str,
        *,
        client_id: str = CLIENT_ID,
        audience: str = AUDIENCE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = _checked_issuer(issuer)
        self.client_id = client_id
        self.audience = audience
        self._clock = clock
        self._key, self.kid = _signing_key(Path(home) / KEY_FOLDER)

    def __repr__(self) -> str:
        return f"LocalTokenIssuer(issuer={self.issuer!r}, kid={self.kid!r})"

    # ------------------------------------------------------------------ where

    @property
    def discovery_url(self) -> str:
        return self.issuer + DISCOVERY_PATH

    @property
    def jwks_url(self) -> str:
        return self.issuer + JWKS_PATH

    @property
    def discovery_path(self) -> str:
        """The URL path the discovery document is served at."""
        return urlsplit(self.discovery_url).path

    @property
    def jwks_path(self) -> str:
        """The URL path the JWKS is served at."""
        return urlsplit(self.jwks_url).path

    # ------------------------------------------------------------------ documents

    def discovery(self) -> dict[str, Any]:
        """The realm's OpenID discovery document (what a verifier reads first)."""
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_url,
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "claims_supported": [
                "iss",
                "sub",
                "aud",
                "azp",
                "exp",
                "iat",
                "typ",
                "preferred_username",
                "groups",
            ],
        }

    def jwks(self) -> dict[str, Any]:
        """The realm's public signing keys."""
        return {
            "keys": [{**_public_jwk(self._key), "kid": self.kid, "alg": ALGORITHM, "use": "sig"}]
        }

    # ------------------------------------------------------------------ tokens

    def mint(
        self,
        *,
        subject: str,
        username: str,
        groups: Sequence[str] = (),
        lifetime_seconds: float = 3600,
    ) -> str:
        """A signed access token for ``subject`` with these Keycloak ``groups``."""
        if not subject.strip() or len(subject) > 255:
            raise ValueError("the subject must be 1 to 255 characters")
        if not username.strip() or len(username) > 255:
            raise ValueError("the username must be 1 to 255 characters")
        if not 0 < lifetime_seconds <= MAX_LIFETIME_SECONDS:
            raise ValueError(f"the lifetime must be between 1 and {MAX_LIFETIME_SECONDS} seconds")
        for group in groups:
            if not isinstance(group, str) or not _GROUP.fullmatch(group):
                raise ValueError(
                    f"invalid group {group!r}: a Keycloak group path such as "
                    "/proj/<virtual lab id>/<project id>/member"
                )
        now = self._clock()
        claims = {
            "exp": int(now + lifetime_seconds),
            "iat": int(now),
            "auth_time": int(now),
            "jti": str(uuid.uuid4()),
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "typ": "Bearer",
            "azp": self.client_id,
            "scope": "openid profile groups",
            "preferred_username": username,
            "groups": list(groups),
        }
        headers = {"kid": self.kid, "typ": "JWT"}
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers=headers)


def subject_of(username: str, issuer: str) -> str:
    """A stable subject (a UUID, as Keycloak's) for a local user of a realm."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{_checked_issuer(issuer)}/users/{username}"))


def mint_token(
    home: Path,
    issuer: str,
    groups: Sequence[str],
    *,
    username: str,
    subject: str | None = None,
    lifetime_seconds: float = 3600,
) -> str:
    """A token of the local realm for ``username`` (its subject derived from the name unless
    given), as ``obp-workflow token`` prints it."""
    token_issuer = LocalTokenIssuer(home, issuer)
    return token_issuer.mint(
        subject=subject or subject_of(username, token_issuer.issuer),
        username=username,
        groups=groups,
        lifetime_seconds=lifetime_seconds,
    )


# ---------------------------------------------------------------------- the key


def _checked_issuer(issuer: str) -> str:
    issuer = issuer.rstrip("/")
    parts = urlsplit(issuer)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the issuer must be an http(s) URL, not {issuer!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(
            f"the issuer must be a plain URL, without query or credentials: {issuer!r}"
        )
    return issuer


def _signing_key(folder: Path) -> tuple[rsa.RSAPrivateKey, str]:
    """The realm's RSA private key, made when missing, and its kid."""
    path = private_folder(folder) / KEY_FILE
    try:
        pem = read_private(path)
    except FileNotFoundError:
        new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        create_exclusive(
            path,
            new.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        pem = read_private(path)  # ours, or the one a racing process published first
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{path} holds no readable unencrypted private key") from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise ValueError(f"{path} must hold an RSA key of at least 2048 bits")
    return key, _thumbprint(_public_jwk(key))


def _public_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "n": _b64_uint(numbers.n), "e": _b64_uint(numbers.e)}


def _b64_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace."""
    canonical = json.dumps(
        {name: jwk[name] for name in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True
    )
    return (
        base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    )
