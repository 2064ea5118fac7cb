"""Keycloak access tokens, verified locally against the realm's published keys.

The verifier reads the realm's discovery document (``{issuer}/.well-known/openid-configuration``)
and its JWKS once, keeps the keys, and verifies each token: its signature (PyJWT, with the key
the token's ``kid`` names and only an asymmetric algorithm the realm advertises), issuer,
audience or authorized party, lifetime. Memberships come
from the token's ``groups`` claim or, when configured, from the realm's ``/userinfo`` endpoint
(called with the token; the answer is cached per token hash until the token expires).

Rules that hold for every token:
- the answer to any bad token is ``Unauthenticated()`` with the same fixed message; the reason
  goes to one debug log line, which never holds the token, its claims or its header values;
- only asymmetric algorithms are accepted (never ``none``, never HMAC), and only those the
  issuer advertises and the key itself names;
- an unknown ``kid`` refetches the JWKS at most once per ``jwks_min_refresh_seconds``, so a
  flood of junk tokens cannot turn into a flood of requests to Keycloak;
- a failed JWKS fetch keeps the keys already known (it is logged as a warning).

The module stays cheap to import (the Lambda authorizer's cold start): PyJWT and the standard
library's ``http.client`` (:mod:`.fetch`), no HTTP client library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import jwt

from obp_workflow.adapters.keycloak.fetch import FetchFailed as _FetchFailed
from obp_workflow.adapters.keycloak.fetch import JsonClient
from obp_workflow.core.errors import Unauthenticated
from obp_workflow.core.identity import Principal, parse_groups
from obp_workflow.ports.identity import TokenVerifier

if TYPE_CHECKING:
    from jwt.types import Options

log = logging.getLogger(__name__)

GroupsSource = Literal["token", "userinfo"]

#: Every signature algorithm this verifier can ever accept: asymmetric ones only.
ASYMMETRIC_ALGORITHMS: tuple[str, ...] = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_EC_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_ED_CURVES = frozenset({"Ed25519", "Ed448"})

#: A compact JWS: three non-empty base64url segments, nothing else (no spaces, no "Bearer ").
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_B64URL_TEXT = re.compile(r"[A-Za-z0-9_-]*")

#: The claims are checked here, with the injected clock and the configured leeway.
_SIGNATURE_ONLY: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "enforce_minimum_key_length": True,  # an RSA key under 2048 bits is refused
}
_B64URL = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}


@dataclass(frozen=True)
class KeycloakSettings:
    """How to trust one Keycloak realm.

    ``issuer`` is the realm URL exactly as it appears in the tokens' ``iss``
    (``https://HOST/realms/REALM``; legacy builds ``https://HOST/auth/realms/REALM``). A token is
    for us when its ``aud`` names one of ``audiences`` or its ``azp`` is one of
    ``authorized_parties``; at least one of the two must be given. Times are in seconds.
    """

    issuer: str
    audiences: tuple[str, ...] = ()
    authorized_parties: tuple[str, ...] = ()
    #: Explicit endpoints; None: read from the discovery document.
    jwks_url: str | None = None
    userinfo_url: str | None = None
    #: Where memberships come from: the token's ``groups`` claim, or the ``/userinfo`` endpoint.
    groups_source: GroupsSource = "token"
    #: Accepted signature algorithms (asymmetric only), further narrowed to those the issuer
    #: advertises in ``id_token_signing_alg_values_supported`` and to the key's own ``alg``.
    algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS
    leeway_seconds: float = 30.0
    #: An unknown ``kid`` refetches the JWKS at most once per this interval (junk tokens
    #: cannot make the verifier hammer Keycloak).
    jwks_min_refresh_seconds: float = 60.0
    #: After a failed fetch, the next attempt (for any reason) waits this long.
    jwks_retry_seconds: float = 5.0
    #: Keys older than this are refetched on the next token (a failure keeps them).
    jwks_max_age_seconds: float = 3600.0
    connect_timeout_seconds: float = 2.0
    read_timeout_seconds: float = 3.0
    #: Longer tokens are refused before any parsing.
    max_token_bytes: int = 16 * 1024
    #: Largest discovery, JWKS or userinfo document read.
    max_document_bytes: int = 1024 * 1024
    userinfo_cache_entries: int = 1024
    userinfo_cache_max_seconds: float = 300.0

    def __post_init__(self) -> None:
        issuer = self.issuer.rstrip("/")
        if not issuer.startswith(("https://", "http://")):
            raise ValueError("issuer must be an http(s) URL")
        object.__setattr__(self, "issuer", issuer)
        for name in ("audiences", "authorized_parties", "algorithms"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if not self.audiences and not self.authorized_parties:
            raise ValueError("give audiences or authorized_parties: a token must be for us")
        unsafe = set(self.algorithms) - set(ASYMMETRIC_ALGORITHMS)
        if unsafe or not self.algorithms:
            raise ValueError(
                f"algorithms must be a non-empty subset of {ASYMMETRIC_ALGORITHMS}; "
                f"refused: {sorted(unsafe)}"
            )
        if self.groups_source not in ("token", "userinfo"):
            raise ValueError("groups_source must be 'token' or 'userinfo'")
        if not 0 <= self.leeway_seconds <= 300:
            raise ValueError("leeway_seconds must be between 0 and 300")
        if self.jwks_min_refresh_seconds < 0 or self.jwks_retry_seconds < 0:
            raise ValueError("refresh intervals must not be negative")
        if self.jwks_max_age_seconds < self.jwks_min_refresh_seconds:
            raise ValueError("jwks_max_age_seconds must be >= jwks_min_refresh_seconds")
        if self.max_token_bytes < 256 or self.max_document_bytes < 1024:
            raise ValueError("size limits are too small")
        if self.userinfo_cache_entries < 0 or self.userinfo_cache_max_seconds < 0:
            raise ValueError("userinfo cache limits must not be negative")
        if self.connect_timeout_seconds <= 0 or self.read_timeout_seconds <= 0:
            raise ValueError("timeouts must be positive")


class _Refused(Exception):
    """A token is not accepted; ``reason`` is for the debug log and holds no token data."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Key:
    kid: str
    kty: str
    alg: str | None
    crv: str | None
    key: Any  # PyJWT's key object of the JWK

    def accepts(self, alg: str) -> bool:
        if self.alg is not None and self.alg != alg:
            return False
        if _KEY_TYPES.get(alg[:2]) != self.kty:
            return False
        if self.kty == "EC":
            return self.crv == _EC_CURVES.get(alg)
        if self.kty == "OKP":
            return self.crv in _ED_CURVES
        return True


class KeycloakTokenVerifier(TokenVerifier):
    """Verifies Keycloak access tokens (raw tokens, without ``Bearer``). Thread-safe.

    Nothing is fetched at construction; call ``warm_up()`` at start-up to fetch the keys early.
    ``clock`` (seconds since the epoch) drives both the token lifetimes and the JWKS intervals.
    The realm's documents are read over kept-alive connections (:class:`.fetch.JsonClient`);
    ``close()`` closes them.
    """

    def __init__(
        self,
        settings: KeycloakSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._clock = clock
        self._http = JsonClient(
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            max_bytes=settings.max_document_bytes,
        )
        # Discovery (read once, when an endpoint is not configured).
        self._discovered = False
        self._jwks_url = settings.jwks_url
        self._userinfo_url = settings.userinfo_url
        self._algorithms = frozenset(settings.algorithms)
        # Keys: replaced as a whole, read without the lock.
        self._keys: Mapping[str, tuple[_Key, ...]] | None = None
        self._keys_fetched_at = 0.0
        self._refresh_lock = threading.Lock()
        self._last_failure: float | None = None  # when the last fetch failed
        self._last_miss: float | None = None  # when a fetch last left a wanted kid unknown
        # Userinfo answers by token hash: (expires at, groups).
        self._userinfo: OrderedDict[bytes, tuple[float, tuple[object, ...]]] = OrderedDict()
        self._userinfo_lock = threading.Lock()

    # ------------------------------------------------------------------ TokenVerifier

    def verify(self, token: str) -> Principal:
        reason: str
        try:
            return self._verify(token)
        except _Refused as refused:
            reason = refused.reason
        except Exception as exc:  # a library surprise is a refusal too, never a leak
            reason = f"unexpected {type(exc).__name__}"
            log.warning("bearer token check failed unexpectedly: %s", type(exc).__name__)
        log.debug("bearer token refused: %s", reason)
        raise Unauthenticated()

    # ------------------------------------------------------------------ lifecycle

    def warm_up(self) -> bool:
        """Fetch the discovery document and the keys now; True when keys are known."""
        self._refresh(self._clock(), wanted_kid=None)
        return self._keys is not None

    def close(self) -> None:
        """Close the connections to the realm (a later token opens a new one if needed)."""
        self._http.close()

    # ------------------------------------------------------------------ the checks

    def _verify(self, token: str) -> Principal:
        settings = self._settings
        if not isinstance(token, str) or not token:
            raise _Refused("no token")
        if len(token) > settings.max_token_bytes:
            raise _Refused("token too large")
        if not _COMPACT_JWS.fullmatch(token):
            raise _Refused("not a compact JWS")
        if not _canonical_b64url(token.rpartition(".")[2]):
            raise _Refused("non-canonical signature encoding")
        header = _header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise _Refused("algorithm not accepted")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise _Refused("no usable kid")
        if "crit" in header or header.get("b64", True) is not True:
            # No JWS extension is understood here (RFC 7515 §4.1.11; RFC 7797's b64).
            raise _Refused("critical header extension")
        key = self._key_for(kid, alg)
        try:
            claims = jwt.decode(token, key.key, algorithms=[alg], options=_SIGNATURE_ONLY)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _Refused(f"signature or payload rejected ({type(exc).__name__})") from None
        if not isinstance(claims, dict):
            raise _Refused("payload is not an object")
        now = self._clock()
        subject, exp = self._check_claims(claims, now)
        if settings.groups_source == "userinfo":
            groups: object = self._userinfo_groups(token, subject, exp, now)
        else:
            groups = claims.get("groups", ())
        username = claims.get("preferred_username")
        return Principal(
            subject=subject,
            username=username if isinstance(username, str) and username else subject,
            memberships=parse_groups(groups if isinstance(groups, list | tuple) else ()),
        )

    def _check_claims(self, claims: dict[str, Any], now: float) -> tuple[str, float]:
        settings = self._settings
        leeway = settings.leeway_seconds
        if claims.get("iss") != settings.issuer:
            raise _Refused("wrong issuer")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.strip():
            raise _Refused("no subject")
        exp = _number(claims.get("exp"))
        if exp is None:
            raise _Refused("no usable exp")
        if now >= exp + leeway:
            raise _Refused("expired")
        iat = _number(claims.get("iat"))
        if iat is None:
            raise _Refused("no usable iat")
        if iat > now + leeway:
            raise _Refused("issued in the future")
        if "nbf" in claims:
            nbf = _number(claims["nbf"])
            if nbf is None or nbf > now + leeway:
                raise _Refused("not yet valid")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        azp = claims.get("azp")
        if not (
            any(isinstance(a, str) and a in settings.audiences for a in audiences)
            or (isinstance(azp, str) and azp in settings.authorized_parties)
        ):
            raise _Refused("not for this audience")
        typ = claims.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() != "bearer"):
            raise _Refused("not an access token")
        return subject, exp

    # ------------------------------------------------------------------ keys

    def _key_for(self, kid: str, alg: str) -> _Key:
        now = self._clock()
        keys = self._keys
        stale = (
            keys is not None and now - self._keys_fetched_at >= self._settings.jwks_max_age_seconds
        )
        if keys is None or stale or kid not in keys:
            self._refresh(now, wanted_kid=kid)
            keys = self._keys
        if keys is None:
            raise _Refused("no keys")
        # Discovery (done by the first refresh) may have narrowed the algorithms.
        if alg not in self._algorithms:
            raise _Refused("algorithm not advertised")
        for key in keys.get(kid, ()):
            if key.accepts(alg):
                return key
        raise _Refused("unknown kid" if kid not in keys else "key does not match the algorithm")

    def _refresh(self, now: float, *, wanted_kid: str | None) -> None:
        """Fetch the keys when missing, stale, or lacking ``wanted_kid``, unless it is too soon.

        Missing or stale keys are fetched at once; after a failed fetch, the next attempt waits
        ``jwks_retry_seconds``. A kid still unknown after a successful fetch opens a quiet
        period of ``jwks_min_refresh_seconds`` during which unknown kids fetch nothing.
        """
        settings = self._settings
        with self._refresh_lock:
            keys = self._keys
            fresh = keys is not None and now - self._keys_fetched_at < settings.jwks_max_age_seconds
            if keys is not None and fresh and (wanted_kid is None or wanted_kid in keys):
                return  # another thread fetched them while this one waited
            if not _due(now, self._last_failure, settings.jwks_retry_seconds):
                return  # the last attempt failed moments ago
            if fresh and not _due(now, self._last_miss, settings.jwks_min_refresh_seconds):
                return  # an unknown kid already cost a fetch in this interval
            try:
                self._fetch_keys(now)
            except _FetchFailed as failure:
                self._last_failure = now
                log.warning(
                    "could not refresh the signing keys of %s (%s); keeping %d known key ids",
                    settings.issuer,
                    failure,
                    len(keys or {}),
                )
                return
            self._last_failure = None
            if wanted_kid is not None and wanted_kid not in (self._keys or {}):
                self._last_miss = now

    def _fetch_keys(self, now: float) -> None:
        settings = self._settings
        if not self._discovered and (
            self._jwks_url is None
            or (settings.groups_source == "userinfo" and self._userinfo_url is None)
        ):
            self._discover()
        if self._jwks_url is None:
            raise _FetchFailed("no JWKS URL")
        document = self._get_json(self._jwks_url)
        keys = _parse_jwks(document)
        if not keys:
            raise _FetchFailed("the JWKS holds no usable signing key")
        self._keys = keys
        self._keys_fetched_at = now
        log.info("loaded %d signing key ids of %s", len(keys), settings.issuer)

    def _discover(self) -> None:
        settings = self._settings
        doc = self._get_json(f"{settings.issuer}/.well-known/openid-configuration")
        if doc.get("issuer") != settings.issuer:
            raise _FetchFailed("the discovery document names another issuer")
        jwks_url = self._jwks_url or doc.get("jwks_uri")
        if not isinstance(jwks_url, str) or not jwks_url.startswith(("https://", "http://")):
            raise _FetchFailed("the discovery document has no usable jwks_uri")
        userinfo_url = self._userinfo_url or doc.get("userinfo_endpoint")
        if not isinstance(userinfo_url, str) or not userinfo_url.startswith(
            ("https://", "http://")
        ):
            userinfo_url = None
        algorithms = self._algorithms
        advertised = doc.get("id_token_signing_alg_values_supported")
        if isinstance(advertised, list):
            algorithms = algorithms & {a for a in advertised if isinstance(a, str)}
            if not algorithms:
                log.warning(
                    "%s advertises no accepted signature algorithm: every token is refused",
                    settings.issuer,
                )
        self._jwks_url, self._userinfo_url = jwks_url, userinfo_url
        self._algorithms = frozenset(algorithms)
        self._discovered = True

    # ------------------------------------------------------------------ userinfo

    def _userinfo_groups(self, token: str, subject: str, exp: float, now: float) -> object:
        settings = self._settings
        digest = hashlib.sha256(token.encode()).digest()
        with self._userinfo_lock:
            hit = self._userinfo.get(digest)
            if hit is not None and hit[0] > now:
                self._userinfo.move_to_end(digest)
                return list(hit[1])
        if self._userinfo_url is None:
            raise _Refused("no userinfo endpoint")
        try:
            info = self._get_json(self._userinfo_url, bearer=token)
        except _FetchFailed as failure:
            log.warning("userinfo of %s failed (%s)", settings.issuer, failure)
            raise _Refused("userinfo failed") from None
        if info.get("sub") != subject:
            raise _Refused("userinfo is about another subject")
        groups = info.get("groups", [])
        kept = tuple(groups) if isinstance(groups, list) else ()
        expires = min(exp, now + settings.userinfo_cache_max_seconds)
        if expires > now and settings.userinfo_cache_entries > 0:
            with self._userinfo_lock:
                self._userinfo[digest] = (expires, kept)
                self._userinfo.move_to_end(digest)
                while len(self._userinfo) > settings.userinfo_cache_entries:
                    self._userinfo.popitem(last=False)
        return list(kept)

    # ------------------------------------------------------------------ HTTP

    def _get_json(self, url: str, *, bearer: str | None = None) -> dict[str, Any]:
        """A JSON object from ``url``; _FetchFailed (with a secret-free reason) otherwise."""
        return self._http.get_json(url, bearer=bearer)


def _parse_jwks(document: Mapping[str, Any]) -> dict[str, tuple[_Key, ...]]:
    """The usable signing keys of a JWKS by kid; encryption, symmetric and broken keys skipped."""
    found: dict[str, list[_Key]] = {}
    entries = document.get("keys")
    if not isinstance(entries, list):
        return {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid, kty, alg = entry.get("kid"), entry.get("kty"), entry.get("alg")
        if not isinstance(kid, str) or not kid or kty not in ("RSA", "EC", "OKP"):
            continue
        if entry.get("use", "sig") != "sig" or (
            alg is not None and alg not in ASYMMETRIC_ALGORITHMS
        ):
            continue
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            log.debug("skipped an unreadable JWKS entry (%s)", type(exc).__name__)
            continue
        crv = entry.get("crv")
        found.setdefault(kid, []).append(
            _Key(kid, kty, alg, crv if isinstance(crv, str) else None, key)
        )
    return {kid: tuple(keys) for kid, keys in found.items()}


def _header(token: str) -> dict[str, Any]:
    """The JOSE header: a JSON object, in canonical base64url."""
    try:
        header = json.loads(_canonical_b64url_decode(token[: token.index(".")]))
    except (ValueError, RecursionError) as exc:  # base64, JSON or UTF-8
        raise _Refused(f"unreadable header ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise _Refused("header is not an object")
    return header


def _canonical_b64url_decode(segment: str) -> bytes:
    """Strict unpadded base64url in its one canonical spelling; ``ValueError`` otherwise."""
    if not _B64URL_TEXT.fullmatch(segment) or not _canonical_b64url(segment):
        raise ValueError("not canonical base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise ValueError("not base64url") from None


def _canonical_b64url(segment: str) -> bool:
    """Unpadded base64url whose unused trailing bits are zero (one encoding per value).

    Decoders ignore those bits, so without this check a signature has several spellings.
    """
    rest = len(segment) % 4
    if rest == 1:
        return False
    if rest == 0:
        return True
    unused = 0b1111 if rest == 2 else 0b11
    return _B64URL[segment[-1]] & unused == 0


def _due(now: float, since: float | None, wait: float) -> bool:
    """``wait`` seconds have passed since ``since`` (or the clock went back, or never)."""
    return since is None or now < since or now >= since + wait


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None
