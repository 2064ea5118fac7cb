"""The Keycloak token verifier against a real HTTP issuer with Keycloak's paths.

A corpus of bad tokens (each refused with the same uninformative answer, none logged), the good
cases (groups from the token or from /userinfo), key rotation, and the JWKS cache: at most one
refetch per interval for unknown kids, and a failed fetch never loses the keys already known.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from obp_workflow.adapters.keycloak.fetch import FetchFailed, JsonClient
from obp_workflow.adapters.keycloak.verifier import KeycloakSettings, KeycloakTokenVerifier
from obp_workflow.core.errors import Unauthenticated
from obp_workflow.core.identity import Membership, Principal, Role, parse_groups
from tests.keycloak_issuer import CLIENT_ID, KeycloakIssuer, SigningKey, new_key

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20"
GROUPS = [f"/vlab/{VLAB}/member", f"/proj/{VLAB}/{PROJECT}/admin", "offline_access"]
MEMBERSHIPS = frozenset(
    {Membership(VLAB, None, Role.MEMBER), Membership(VLAB, PROJECT, Role.ADMIN)}
)
SUBJECT = "3f1c2a9e-0000-4000-8000-0000000000b0"
USERNAME = "bob"
ANSWER = str(Unauthenticated())


class Clock:
    """Seconds since the epoch, moved by hand; shared by the issuer and the verifier."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer(clock: Clock) -> Iterator[KeycloakIssuer]:
    with KeycloakIssuer(clock=clock) as realm:
        yield realm


@pytest.fixture
def make_verifier(
    issuer: KeycloakIssuer, clock: Clock
) -> Iterator[Callable[..., KeycloakTokenVerifier]]:
    made: list[KeycloakTokenVerifier] = []

    def make(**overrides: Any) -> KeycloakTokenVerifier:
        settings = KeycloakSettings(issuer=issuer.issuer, authorized_parties=(CLIENT_ID,))
        verifier = KeycloakTokenVerifier(replace(settings, **overrides), clock=clock)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        verifier.close()


@pytest.fixture
def verifier(make_verifier: Callable[..., KeycloakTokenVerifier]) -> KeycloakTokenVerifier:
    return make_verifier()


# ==================================================================== helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def compact(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


def hmac_signed(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """The key confusion attack: an HMAC token whose secret is the issuer's public key."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    signing_input = ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode())])
    mac = hmac.new(secret, signing_input.encode(), digest[header["alg"]]).digest()
    return f"{signing_input}.{b64(mac)}"


def with_payload(token: str, change: Callable[[dict[str, Any]], None]) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(unb64(payload))
    change(claims)
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


def flip(segment: str, index: int) -> str:
    c = segment[index]
    return segment[:index] + ("B" if c != "B" else "C") + segment[index + 1 :]


def refused(verifier: KeycloakTokenVerifier, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token)
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    return str(caught.value)


# ==================================================================== the bad-token corpus

BadToken = Callable[[KeycloakIssuer, float], str]


def _alg_none(issuer: KeycloakIssuer, now: float) -> str:
    return compact({"alg": "none", "typ": "JWT"}, issuer.claims(groups=GROUPS))


def _alg_none_with_kid_and_signature(issuer: KeycloakIssuer, now: float) -> str:
    header = {"alg": "none", "kid": issuer.active.kid, "typ": "JWT"}
    return compact(header, issuer.claims(groups=GROUPS), b"not-a-signature")


def _hs256_public_pem(issuer: KeycloakIssuer, now: float) -> str:
    header = {"alg": "HS256", "kid": issuer.active.kid, "typ": "JWT"}
    return hmac_signed(header, issuer.claims(groups=GROUPS), issuer.active.public_pem())


def _hs512_public_jwk(issuer: KeycloakIssuer, now: float) -> str:
    header = {"alg": "HS512", "kid": issuer.active.kid, "typ": "JWT"}
    secret = json.dumps(issuer.active.public_jwk()).encode()
    return hmac_signed(header, issuer.claims(groups=GROUPS), secret)


def _tampered_payload(issuer: KeycloakIssuer, now: float) -> str:
    def promote(claims: dict[str, Any]) -> None:
        claims["groups"] = [f"/vlab/{VLAB}/admin"]

    return with_payload(issuer.mint(groups=GROUPS), promote)


def _tampered_subject(issuer: KeycloakIssuer, now: float) -> str:
    def impersonate(claims: dict[str, Any]) -> None:
        claims["sub"] = "someone-else"

    return with_payload(issuer.mint(groups=GROUPS), impersonate)


def _tampered_signature(issuer: KeycloakIssuer, now: float) -> str:
    header, payload, signature = issuer.mint(groups=GROUPS).split(".")
    return f"{header}.{payload}.{flip(signature, len(signature) // 2)}"


def _non_canonical_signature(issuer: KeycloakIssuer, now: float) -> str:
    """Same signature bytes, other spelling: the last character's unused bits are set."""
    token = issuer.mint(groups=GROUPS)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    assert last & 0b1111 == 0  # 256 bytes: 342 characters, 4 unused bits in the last one
    spelled = token[:-1] + alphabet[last | 0b0101]
    assert unb64(spelled.rsplit(".", 1)[1]) == unb64(token.rsplit(".", 1)[1])
    return spelled


def _signature_of_another_token(issuer: KeycloakIssuer, now: float) -> str:
    mine = issuer.mint(groups=[])
    theirs = issuer.mint(groups=GROUPS)
    return theirs.rsplit(".", 1)[0] + "." + mine.rsplit(".", 1)[1]


def _unknown_kid(issuer: KeycloakIssuer, now: float) -> str:
    return issuer.mint(groups=GROUPS, key=new_key("kid-nobody-knows"))


def _same_kid_other_key(issuer: KeycloakIssuer, now: float) -> str:
    return issuer.mint(groups=GROUPS, key=new_key(issuer.active.kid))


def _encryption_key(issuer: KeycloakIssuer, now: float) -> str:
    return issuer.mint(groups=GROUPS, key=issuer.encryption_key, algorithm="RS256")


def _wrong_algorithm_for_key(issuer: KeycloakIssuer, now: float) -> str:
    return issuer.mint(groups=GROUPS, algorithm="RS512")  # the JWK says RS256


def _pss_with_rs256_key(issuer: KeycloakIssuer, now: float) -> str:
    return issuer.mint(groups=GROUPS, algorithm="PS256")


def _jku_to_attacker(issuer: KeycloakIssuer, now: float) -> str:
    attacker = new_key("attacker")
    headers = {"jku": "http://127.0.0.1:9/certs", "jwk": attacker.public_jwk()}
    return issuer.mint(groups=GROUPS, key=attacker, headers=headers)


def _kid_not_a_string(issuer: KeycloakIssuer, now: float) -> str:
    token = issuer.mint(groups=GROUPS)
    _, payload, signature = token.split(".")
    header = b64(json.dumps({"alg": "RS256", "kid": 1, "typ": "JWT"}).encode())
    return f"{header}.{payload}.{signature}"


def _payload_not_an_object(issuer: KeycloakIssuer, now: float) -> str:
    return issuer.sign(json.dumps([SUBJECT, "admin"]).encode())


def _payload_not_json(issuer: KeycloakIssuer, now: float) -> str:
    return issuer.sign(b"sub=" + SUBJECT.encode())


def _no_kid(issuer: KeycloakIssuer, now: float) -> str:
    claims = issuer.claims(groups=GROUPS)
    return jwt.encode(claims, issuer.active.private, algorithm="RS256", headers={"typ": "JWT"})


def _just_over(limit: int, issuer: KeycloakIssuer) -> str:
    """A valid token a few bytes longer than ``limit``."""
    base = len(issuer.mint(groups=GROUPS, extra={"pad": ""}))
    return issuer.mint(groups=GROUPS, extra={"pad": "x" * ((limit - base) * 3 // 4 + 8)})


def _header_not_json(issuer: KeycloakIssuer, now: float) -> str:
    _, payload, signature = issuer.mint(groups=GROUPS).split(".")
    return f"{b64(b'{alg: RS256')}.{payload}.{signature}"


CORPUS: dict[str, BadToken] = {
    "expired": lambda i, now: i.mint(groups=GROUPS, issued_at=now - 3600, lifetime=300),
    "expired-beyond-the-leeway": lambda i, now: i.mint(
        groups=GROUPS, issued_at=now - 331, lifetime=300
    ),
    "not-yet-valid": lambda i, now: i.mint(groups=GROUPS, not_before=now + 120),
    "issued-in-the-future": lambda i, now: i.mint(groups=GROUPS, issued_at=now + 120),
    "wrong-issuer": lambda i, now: i.mint(
        groups=GROUPS, extra={"iss": i.issuer.replace("/realms/obp", "/realms/other")}
    ),
    "legacy-issuer-path": lambda i, now: i.mint(
        groups=GROUPS, extra={"iss": i.issuer.replace("/realms/", "/auth/realms/")}
    ),
    "issuer-with-trailing-slash": lambda i, now: i.mint(
        groups=GROUPS, extra={"iss": i.issuer + "/"}
    ),
    "wrong-audience-and-azp": lambda i, now: i.mint(
        groups=GROUPS, audience="other-service", azp="other-client"
    ),
    "no-audience-wrong-azp": lambda i, now: i.mint(
        groups=GROUPS, audience=None, azp="other-client"
    ),
    "id-token": lambda i, now: i.mint(groups=GROUPS, extra={"typ": "ID"}),
    "refresh-token-typ": lambda i, now: i.mint(groups=GROUPS, extra={"typ": "Refresh"}),
    "alg-none": _alg_none,
    "alg-none-with-kid-and-signature": _alg_none_with_kid_and_signature,
    "hs256-signed-with-the-public-pem": _hs256_public_pem,
    "hs512-signed-with-the-public-jwk": _hs512_public_jwk,
    "tampered-payload-groups": _tampered_payload,
    "tampered-payload-subject": _tampered_subject,
    "tampered-signature": _tampered_signature,
    "non-canonical-signature-encoding": _non_canonical_signature,
    "signature-of-another-token": _signature_of_another_token,
    "unknown-kid": _unknown_kid,
    "same-kid-key-of-another-issuer": _same_kid_other_key,
    "signed-with-the-encryption-key": _encryption_key,
    "alg-other-than-the-jwk-alg": _wrong_algorithm_for_key,
    "ps256-with-an-rs256-key": _pss_with_rs256_key,
    "jku-and-jwk-headers-to-an-attacker-key": _jku_to_attacker,
    "kid-not-a-string": _kid_not_a_string,
    "no-kid": _no_kid,
    "critical-header-extension": lambda i, now: i.mint(
        groups=GROUPS, headers={"crit": ["exp"], "exp": int(now) + 60}
    ),
    "malformed-base64": lambda i, now: "eyJ@bGciOi.eyJzdWIi$.c2ln!",
    "segment-of-impossible-length": lambda i, now: i.mint(groups=GROUPS) + "AAA",
    "header-not-json": _header_not_json,
    "payload-not-an-object": _payload_not_an_object,
    "payload-not-json": _payload_not_json,
    "missing-sub": lambda i, now: i.mint(groups=GROUPS, drop=["sub"]),
    "empty-sub": lambda i, now: i.mint(groups=GROUPS, extra={"sub": ""}),
    "sub-not-a-string": lambda i, now: i.mint(groups=GROUPS, extra={"sub": 42}),
    "missing-exp": lambda i, now: i.mint(groups=GROUPS, drop=["exp"]),
    "exp-as-a-string": lambda i, now: i.mint(groups=GROUPS, extra={"exp": "9999999999"}),
    "exp-as-a-boolean": lambda i, now: i.mint(groups=GROUPS, extra={"exp": True}),
    "missing-iat": lambda i, now: i.mint(groups=GROUPS, drop=["iat"]),
    "nbf-not-a-number": lambda i, now: i.mint(groups=GROUPS, extra={"nbf": "soon"}),
    "100-kb-token": lambda i, now: i.mint(groups=GROUPS, extra={"pad": "x" * 100_000}),
    "just-over-16-kb": lambda i, now: _just_over(16 * 1024, i),
    "bearer-prefixed": lambda i, now: "Bearer " + i.mint(groups=GROUPS),
    "lower-case-bearer-prefixed": lambda i, now: "bearer " + i.mint(groups=GROUPS),
    "surrounded-by-spaces": lambda i, now: " " + i.mint(groups=GROUPS) + " ",
    "two-tokens": lambda i, now: i.mint(groups=GROUPS) + "." + i.mint(groups=GROUPS),
    "four-segments": lambda i, now: i.mint(groups=GROUPS) + ".e30",
    "empty-signature": lambda i, now: i.mint(groups=GROUPS).rsplit(".", 1)[0] + ".",
    "empty": lambda i, now: "",
    "blank": lambda i, now: " \t\n",
    "non-ascii": lambda i, now: "ey\u00e9J.eyJ.sig",
    "nul-bytes": lambda i, now: "\x00" * 32,
}

#: Why each token is refused, as the debug log says: proves each check, not just "refused".
REASONS = {
    "expired": "expired",
    "expired-beyond-the-leeway": "expired",
    "not-yet-valid": "not yet valid",
    "issued-in-the-future": "issued in the future",
    "wrong-issuer": "wrong issuer",
    "legacy-issuer-path": "wrong issuer",
    "issuer-with-trailing-slash": "wrong issuer",
    "wrong-audience-and-azp": "not for this audience",
    "no-audience-wrong-azp": "not for this audience",
    "id-token": "not an access token",
    "refresh-token-typ": "not an access token",
    "alg-none": "not a compact JWS",
    "alg-none-with-kid-and-signature": "algorithm not accepted",
    "hs256-signed-with-the-public-pem": "algorithm not accepted",
    "hs512-signed-with-the-public-jwk": "algorithm not accepted",
    "tampered-payload-groups": "signature or payload rejected (InvalidSignatureError)",
    "tampered-payload-subject": "signature or payload rejected (InvalidSignatureError)",
    "tampered-signature": "signature or payload rejected (InvalidSignatureError)",
    "non-canonical-signature-encoding": "non-canonical signature encoding",
    "signature-of-another-token": "signature or payload rejected (InvalidSignatureError)",
    "unknown-kid": "unknown kid",
    "same-kid-key-of-another-issuer": "signature or payload rejected (InvalidSignatureError)",
    "signed-with-the-encryption-key": "unknown kid",
    "alg-other-than-the-jwk-alg": "key does not match the algorithm",
    "ps256-with-an-rs256-key": "key does not match the algorithm",
    "jku-and-jwk-headers-to-an-attacker-key": "unknown kid",
    "kid-not-a-string": "no usable kid",
    "no-kid": "no usable kid",
    "critical-header-extension": "critical header extension",
    "malformed-base64": "not a compact JWS",
    "segment-of-impossible-length": "non-canonical signature encoding",
    "header-not-json": "unreadable header",
    "payload-not-an-object": "signature or payload rejected (DecodeError)",
    "payload-not-json": "signature or payload rejected (DecodeError)",
    "missing-sub": "no subject",
    "empty-sub": "no subject",
    "sub-not-a-string": "no subject",
    "missing-exp": "no usable exp",
    "exp-as-a-string": "no usable exp",
    "exp-as-a-boolean": "no usable exp",
    "missing-iat": "no usable iat",
    "nbf-not-a-number": "not yet valid",
    "100-kb-token": "token too large",
    "just-over-16-kb": "token too large",
    "bearer-prefixed": "not a compact JWS",
    "lower-case-bearer-prefixed": "not a compact JWS",
    "surrounded-by-spaces": "not a compact JWS",
    "two-tokens": "not a compact JWS",
    "four-segments": "not a compact JWS",
    "empty-signature": "not a compact JWS",
    "empty": "no token",
    "blank": "not a compact JWS",
    "non-ascii": "not a compact JWS",
    "nul-bytes": "not a compact JWS",
}


def test_the_corpus_tokens_are_what_they_claim(issuer: KeycloakIssuer, clock: Clock) -> None:
    assert len(CORPUS["100-kb-token"](issuer, clock.now)) > 100_000
    assert 16 * 1024 < len(CORPUS["just-over-16-kb"](issuer, clock.now)) < 16 * 1024 + 32
    assert len(CORPUS["segment-of-impossible-length"](issuer, clock.now).split(".")[2]) % 4 == 1
    assert "kid" not in jwt.get_unverified_header(CORPUS["no-kid"](issuer, clock.now))
    assert REASONS.keys() == CORPUS.keys()


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_a_bad_token_is_refused_with_the_same_answer(
    issuer: KeycloakIssuer,
    verifier: KeycloakTokenVerifier,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    good = issuer.mint(groups=GROUPS)
    assert verifier.verify(good).memberships == MEMBERSHIPS  # the realm and keys work
    token = CORPUS[kind](issuer, clock.now)
    caplog.set_level(logging.DEBUG)

    assert refused(verifier, token) == ANSWER

    # The reason is logged, at debug level...
    assert f"bearer token refused: {REASONS[kind]}" in caplog.text
    logged = caplog.text
    for secret in (token.strip(), good):  # ...but never the token, nor any claim
        for i in range(0, len(secret) - 15, 7):
            assert secret[i : i + 16] not in logged
    assert SUBJECT not in logged
    assert USERNAME not in logged
    assert "example.org" not in logged


def test_every_corpus_token_gets_exactly_the_same_message(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier, clock: Clock
) -> None:
    messages = {refused(verifier, make(issuer, clock.now)) for make in CORPUS.values()}
    assert messages == {ANSWER}


@pytest.mark.parametrize(
    "kind",
    [
        "100-kb-token",
        "just-over-16-kb",
        "bearer-prefixed",
        "empty",
        "blank",
        "malformed-base64",
        "alg-none",
        "hs256-signed-with-the-public-pem",
        "non-canonical-signature-encoding",
    ],
)
def test_tokens_refused_on_their_form_cost_no_request(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier, clock: Clock, kind: str
) -> None:
    token = CORPUS[kind](issuer, clock.now)
    refused(verifier, token)
    assert sum(issuer.requests.values()) == 0


@pytest.mark.parametrize("kind", ["not-a-string-none", "not-a-string-bytes"])
def test_a_token_that_is_not_a_string_is_refused(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier, kind: str
) -> None:
    value: Any = None if kind.endswith("none") else issuer.mint(groups=GROUPS).encode()
    assert refused(verifier, value) == ANSWER


def test_the_attacker_key_named_in_the_header_is_never_fetched(
    clock: Clock, make_verifier: Callable[..., KeycloakTokenVerifier], issuer: KeycloakIssuer
) -> None:
    with KeycloakIssuer("attacker", clock=clock) as attacker:
        token = issuer.mint(
            groups=GROUPS,
            key=attacker.active,
            headers={"jku": attacker.jwks_url, "x5u": attacker.jwks_url},
        )
        refused(make_verifier(), token)
        assert sum(attacker.requests.values()) == 0


# ==================================================================== good tokens


def test_a_valid_token_is_its_principal(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier
) -> None:
    got = verifier.verify(issuer.mint(SUBJECT, username=USERNAME, groups=GROUPS))
    assert got == Principal(SUBJECT, USERNAME, MEMBERSHIPS)
    assert issuer.requests == {"discovery": 1, "certs": 1}


def test_the_keys_are_cached(issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier) -> None:
    for n in range(20):
        verifier.verify(issuer.mint(f"user-{n}", groups=GROUPS))
    assert issuer.requests == {"discovery": 1, "certs": 1}


def test_without_preferred_username_the_username_is_the_subject(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier
) -> None:
    assert verifier.verify(issuer.mint(SUBJECT, username=None)).username == SUBJECT


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        (None, frozenset()),
        ([], frozenset()),
        (["offline_access", "uma_authorization", "/service/nexus/admin"], frozenset()),
        ([f"/vlab/{VLAB}/owner", f"/proj/{VLAB}/not-a-uuid/admin"], frozenset()),
    ],
)
def test_groups_that_are_not_memberships_give_none(
    issuer: KeycloakIssuer,
    verifier: KeycloakTokenVerifier,
    groups: list[str] | None,
    expected: frozenset[Membership],
) -> None:
    assert verifier.verify(issuer.mint(groups=groups)).memberships == expected


def test_a_groups_claim_that_is_not_a_list_gives_no_membership(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier
) -> None:
    token = issuer.mint(extra={"groups": f"/vlab/{VLAB}/admin"})
    assert verifier.verify(token).memberships == frozenset()


def test_the_audience_may_be_a_list(
    issuer: KeycloakIssuer, make_verifier: Callable[..., KeycloakTokenVerifier]
) -> None:
    verifier = make_verifier(audiences=("obp-workflow",), authorized_parties=())
    token = issuer.mint(groups=GROUPS, audience=["account", "obp-workflow"], azp="other")
    assert verifier.verify(token).memberships == MEMBERSHIPS
    refused(verifier, issuer.mint(groups=GROUPS, audience="account"))


def test_the_authorized_party_alone_is_enough(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier
) -> None:
    assert verifier.verify(issuer.mint(groups=GROUPS, audience=None)).subject == SUBJECT


@pytest.mark.parametrize("offset", [-29, 0, 29])
def test_times_are_checked_with_the_leeway(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier, clock: Clock, offset: int
) -> None:
    now = clock.now
    expiring = issuer.mint(groups=GROUPS, issued_at=now - 300 + offset, lifetime=300)
    starting = issuer.mint(groups=GROUPS, not_before=now - offset)
    fresh = issuer.mint(groups=GROUPS, issued_at=now - offset)
    for token in (expiring, starting, fresh):
        verifier.verify(token)


def test_an_expired_token_is_refused_once_the_clock_passes_exp_and_leeway(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier, clock: Clock
) -> None:
    token = issuer.mint(groups=GROUPS, lifetime=60)
    verifier.verify(token)
    clock.advance(60 + 29)
    verifier.verify(token)
    clock.advance(1)
    refused(verifier, token)


# ==================================================================== groups from /userinfo


def test_with_userinfo_the_memberships_come_from_userinfo(
    issuer: KeycloakIssuer, make_verifier: Callable[..., KeycloakTokenVerifier]
) -> None:
    verifier = make_verifier(groups_source="userinfo")
    issuer.set_groups(SUBJECT, GROUPS)
    # The token's own claim says otherwise: it is not what counts.
    token = issuer.mint(SUBJECT, groups=[f"/vlab/{VLAB}/admin"])
    assert verifier.verify(token) == Principal(SUBJECT, USERNAME, MEMBERSHIPS)
    assert issuer.requests["userinfo"] == 1


def test_userinfo_is_cached_per_token_until_the_token_expires(
    issuer: KeycloakIssuer, make_verifier: Callable[..., KeycloakTokenVerifier], clock: Clock
) -> None:
    verifier = make_verifier(groups_source="userinfo", userinfo_cache_max_seconds=3600)
    issuer.set_groups(SUBJECT, GROUPS)
    token = issuer.mint(SUBJECT, lifetime=120)
    for _ in range(5):
        assert verifier.verify(token).memberships == MEMBERSHIPS
    assert issuer.requests["userinfo"] == 1
    other = issuer.mint(SUBJECT, lifetime=600)
    verifier.verify(other)
    assert issuer.requests["userinfo"] == 2  # one entry per token
    issuer.set_groups(SUBJECT, [f"/vlab/{VLAB}/admin"])
    clock.advance(119)
    assert verifier.verify(token).memberships == MEMBERSHIPS  # cached: Keycloak not asked
    assert issuer.requests["userinfo"] == 2
    # Past exp, inside the leeway: the entry is gone, and Keycloak says the token is over.
    clock.advance(2)
    refused(verifier, token)
    assert issuer.requests["userinfo"] == 3
    assert verifier.verify(other).memberships == MEMBERSHIPS  # still cached
    assert issuer.requests["userinfo"] == 3


def test_the_userinfo_cache_is_bounded(
    issuer: KeycloakIssuer, make_verifier: Callable[..., KeycloakTokenVerifier]
) -> None:
    verifier = make_verifier(groups_source="userinfo", userinfo_cache_entries=2)
    tokens = [issuer.mint(f"user-{n}") for n in range(3)]
    for token in tokens:
        verifier.verify(token)
    verifier.verify(tokens[2])
    verifier.verify(tokens[1])
    assert issuer.requests["userinfo"] == 3
    verifier.verify(tokens[0])  # evicted: the least recently used
    assert issuer.requests["userinfo"] == 4


def test_the_userinfo_cache_ttl_is_capped(
    issuer: KeycloakIssuer, make_verifier: Callable[..., KeycloakTokenVerifier], clock: Clock
) -> None:
    verifier = make_verifier(groups_source="userinfo", userinfo_cache_max_seconds=60)
    token = issuer.mint(SUBJECT, lifetime=3000)
    verifier.verify(token)
    clock.advance(61)
    verifier.verify(token)
    assert issuer.requests["userinfo"] == 2


@pytest.mark.parametrize("fault", ["down", "401", "other-subject", "not-userinfo"])
def test_a_userinfo_failure_refuses_the_token(
    issuer: KeycloakIssuer,
    make_verifier: Callable[..., KeycloakTokenVerifier],
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    verifier = make_verifier(groups_source="userinfo")
    token = issuer.mint(SUBJECT)
    if fault == "down":
        issuer.status["userinfo"] = 503
    elif fault == "401":
        issuer.status["userinfo"] = 401
    elif fault == "other-subject":
        issuer.userinfo_overrides["sub"] = "someone-else"
    else:
        issuer.status["userinfo"] = 200
        issuer.userinfo_overrides.clear()
        verifier = make_verifier(groups_source="userinfo", userinfo_url=issuer.jwks_url)
    caplog.set_level(logging.DEBUG)
    assert refused(verifier, token) == ANSWER
    assert token[:40] not in caplog.text
    assert token.rsplit(".", 1)[1][:40] not in caplog.text


def test_userinfo_found_through_discovery_with_an_explicit_jwks_url(
    issuer: KeycloakIssuer, make_verifier: Callable[..., KeycloakTokenVerifier]
) -> None:
    verifier = make_verifier(groups_source="userinfo", jwks_url=issuer.jwks_url)
    issuer.set_groups(SUBJECT, GROUPS)
    assert verifier.verify(issuer.mint(SUBJECT)).memberships == MEMBERSHIPS
    assert issuer.requests == {"discovery": 1, "certs": 1, "userinfo": 1}


# ==================================================================== keys, rotation, refetches


def _jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        text = RSAAlgorithm.to_jwk(public)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        text = ECAlgorithm.to_jwk(public)
    else:
        text = OKPAlgorithm.to_jwk(public)
    jwk: dict[str, Any] = json.loads(text)
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


def test_ec_and_edwards_keys_are_accepted(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier
) -> None:
    """A realm may sign with ECDSA or EdDSA keys (Keycloak's ecdsa and eddsa providers)."""
    signers: list[tuple[str, Any]] = [
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("ES384", ec.generate_private_key(ec.SECP384R1())),
        ("ES512", ec.generate_private_key(ec.SECP521R1())),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
        ("EdDSA", ed448.Ed448PrivateKey.generate()),
    ]
    jwks = {"keys": [_jwk(key, f"k{n}", alg) for n, (alg, key) in enumerate(signers)]}
    issuer._certs = lambda: (200, jwks)  # type: ignore[method-assign]
    advertised = [*issuer.advertised_algorithms, "EdDSA"]  # Keycloak 24 lists no EdDSA
    issuer.discovery_overrides["id_token_signing_alg_values_supported"] = advertised
    for n, (alg, key) in enumerate(signers):
        token = jwt.encode(
            issuer.claims(groups=GROUPS), key, algorithm=alg, headers={"kid": f"k{n}"}
        )
        assert verifier.verify(token).memberships == MEMBERSHIPS
        other = signers[(n + 1) % len(signers)][1]
        if type(other) is type(key):
            continue
        refused(verifier, token.rsplit(".", 1)[0] + "." + _signature_by(other, token))


def _signature_by(private: Any, token: str) -> str:
    """A signature of the token's signed text by another key (of another type)."""
    signing_input = token.rsplit(".", 1)[0].encode()
    if isinstance(private, ec.EllipticCurvePrivateKey):
        signature = ECAlgorithm(ECAlgorithm.SHA256).sign(signing_input, private)
    else:
        signature = private.sign(signing_input)
    return base64.urlsafe_b64encode(signature).rstrip(b"=").decode()


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # minting it
def test_a_key_under_2048_bits_is_refused(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    short = SigningKey("short", rsa.generate_private_key(public_exponent=65537, key_size=1024))
    issuer.keys, issuer.active = [short], short
    caplog.set_level(logging.DEBUG)
    refused(verifier, issuer.mint(groups=GROUPS))
    assert "bearer token refused: signature or payload rejected (InvalidKeyError)" in caplog.text


def test_a_rotated_key_is_accepted_after_one_refetch(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier
) -> None:
    old = issuer.mint(groups=GROUPS)
    verifier.verify(old)
    assert issuer.jwks_fetches == 1
    issuer.rotate(keep_old=True)
    new = issuer.mint(groups=GROUPS)
    assert verifier.verify(new).memberships == MEMBERSHIPS
    assert issuer.jwks_fetches == 2
    for _ in range(5):
        verifier.verify(old)
        verifier.verify(new)
    assert issuer.jwks_fetches == 2
    assert issuer.requests["discovery"] == 1


def test_a_dropped_key_stops_working_when_the_keys_are_refreshed(
    issuer: KeycloakIssuer, make_verifier: Callable[..., KeycloakTokenVerifier], clock: Clock
) -> None:
    verifier = make_verifier(jwks_max_age_seconds=600)
    old = issuer.mint(groups=GROUPS, lifetime=3600)
    verifier.verify(old)
    issuer.rotate(keep_old=False)
    new = issuer.mint(groups=GROUPS, lifetime=3600)
    verifier.verify(new)  # the refetch for the new kid already drops the old one
    assert issuer.jwks_fetches == 2
    refused(verifier, old)  # now an unknown kid: one refetch, in case it came back
    refused(verifier, old)
    assert issuer.jwks_fetches == 3


def test_stale_keys_are_refetched_after_their_maximum_age(
    issuer: KeycloakIssuer, make_verifier: Callable[..., KeycloakTokenVerifier], clock: Clock
) -> None:
    verifier = make_verifier(jwks_max_age_seconds=600)
    old = issuer.mint(groups=GROUPS, lifetime=3600)
    verifier.verify(old)
    issuer.rotate(keep_old=False)  # the realm drops the key; this verifier has not seen it yet
    verifier.verify(old)
    clock.advance(601)
    refused(verifier, old)
    assert issuer.jwks_fetches == 2


def test_fifty_unknown_kids_cost_at_most_one_refetch_per_interval(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier, clock: Clock
) -> None:
    verifier.verify(issuer.mint(groups=GROUPS))
    assert issuer.jwks_fetches == 1
    junk = [issuer.mint(groups=GROUPS, key=new_key(f"junk-{n}")) for n in range(3)]
    for n in range(50):
        refused(verifier, junk[n % 3])
    assert issuer.jwks_fetches == 2  # one refetch for the first unknown kid, then none
    clock.advance(59)
    refused(verifier, junk[0])
    assert issuer.jwks_fetches == 2
    clock.advance(1)
    for _ in range(50):
        refused(verifier, junk[1])
    assert issuer.jwks_fetches == 3  # one more per interval


def test_a_fresh_verifier_fetches_once_for_fifty_junk_tokens(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier
) -> None:
    junk = [new_key(f"junk-{n}") for n in range(2)]
    for n in range(50):
        refused(verifier, issuer.mint(groups=GROUPS, key=junk[n % 2]))
    assert issuer.requests == {"discovery": 1, "certs": 1}


def test_a_bad_signature_with_a_known_kid_causes_no_refetch(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier, clock: Clock
) -> None:
    verifier.verify(issuer.mint(groups=GROUPS))
    impostor = new_key(issuer.active.kid)
    for _ in range(20):
        refused(verifier, issuer.mint(groups=GROUPS, key=impostor))
    assert issuer.jwks_fetches == 1


@pytest.mark.parametrize("kind", ["good", "junk"])
def test_concurrent_first_tokens_fetch_once(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier, kind: str
) -> None:
    issuer.delay["certs"] = 0.2  # all 16 threads arrive while the first fetch is on its way
    token = issuer.mint(groups=GROUPS, key=new_key("junk") if kind == "junk" else None)
    start = threading.Barrier(16)
    results: list[str] = []

    def worker() -> None:
        start.wait()
        try:
            verifier.verify(token)
            results.append("good")
        except Unauthenticated:
            results.append("junk")

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [kind] * 16
    assert issuer.requests == {"discovery": 1, "certs": 1}


def test_a_failed_jwks_fetch_keeps_the_known_keys(
    issuer: KeycloakIssuer,
    verifier: KeycloakTokenVerifier,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    old = issuer.mint(groups=GROUPS, lifetime=3600)
    verifier.verify(old)
    issuer.rotate(keep_old=True)
    new = issuer.mint(groups=GROUPS, lifetime=3600)
    issuer.status["certs"] = 503
    with caplog.at_level(logging.WARNING):
        refused(verifier, new)
    assert "could not refresh the signing keys" in caplog.text
    assert verifier.verify(old).memberships == MEMBERSHIPS  # not poisoned
    # A failed fetch is retried after the (shorter) retry delay, not on every token.
    for _ in range(20):
        refused(verifier, new)
    assert issuer.jwks_fetches == 2
    del issuer.status["certs"]
    clock.advance(5)
    assert verifier.verify(new).memberships == MEMBERSHIPS
    assert verifier.verify(old).memberships == MEMBERSHIPS
    assert issuer.jwks_fetches == 3


@pytest.mark.parametrize(
    "broken",
    [
        {"keys": []},
        {"keys": "nope"},
        {"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]},
        {"keys": [{"kty": "RSA", "kid": "k", "n": "!!", "e": "AQAB"}]},
        ["not", "an", "object"],
    ],
    ids=["empty", "not-a-list", "symmetric-only", "unreadable-key", "not-an-object"],
)
def test_a_useless_jwks_keeps_the_known_keys(
    issuer: KeycloakIssuer,
    clock: Clock,
    make_verifier: Callable[..., KeycloakTokenVerifier],
    broken: Any,
) -> None:
    verifier = make_verifier(jwks_max_age_seconds=60)
    token = issuer.mint(groups=GROUPS, lifetime=3600)
    verifier.verify(token)
    original = issuer._certs
    issuer._certs = lambda: (200, broken)  # type: ignore[method-assign]
    try:
        clock.advance(61)  # the keys are stale: the next token refreshes them, and fails
        assert verifier.verify(token).memberships == MEMBERSHIPS
        assert issuer.jwks_fetches == 1  # the patched endpoint does not count
    finally:
        issuer._certs = original  # type: ignore[method-assign]


def test_an_unreachable_realm_keeps_the_known_keys(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    realm = KeycloakIssuer(clock=clock)
    settings = KeycloakSettings(issuer=realm.issuer, authorized_parties=(CLIENT_ID,))
    verifier = KeycloakTokenVerifier(settings, clock=clock)
    try:
        token = realm.mint(groups=GROUPS)
        verifier.verify(token)
        realm.rotate()
        rotated = realm.mint(groups=GROUPS)
        realm.close()  # connection refused from now on
        with caplog.at_level(logging.WARNING):
            refused(verifier, rotated)
        assert "could not refresh the signing keys" in caplog.text
        assert verifier.verify(token).memberships == MEMBERSHIPS
    finally:
        verifier.close()
        realm.close()


def test_a_realm_unreachable_from_the_start_refuses_every_token(clock: Clock) -> None:
    realm = KeycloakIssuer(clock=clock)
    token = realm.mint(groups=GROUPS)
    settings = KeycloakSettings(issuer=realm.issuer, authorized_parties=(CLIENT_ID,))
    realm.close()
    verifier = KeycloakTokenVerifier(settings, clock=clock)
    try:
        assert refused(verifier, token) == ANSWER
        assert verifier.warm_up() is False
    finally:
        verifier.close()


def test_a_slow_realm_times_out(
    issuer: KeycloakIssuer, make_verifier: Callable[..., KeycloakTokenVerifier]
) -> None:
    verifier = make_verifier(read_timeout_seconds=0.2)
    issuer.delay["discovery"] = 1.0
    started = time.monotonic()
    refused(verifier, issuer.mint(groups=GROUPS))
    assert time.monotonic() - started < 0.9


def test_warm_up_fetches_the_keys_before_the_first_token(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier
) -> None:
    assert verifier.warm_up() is True
    assert issuer.requests == {"discovery": 1, "certs": 1}
    verifier.verify(issuer.mint(groups=GROUPS))
    assert issuer.requests == {"discovery": 1, "certs": 1}


def test_an_explicit_jwks_url_needs_no_discovery(
    issuer: KeycloakIssuer, make_verifier: Callable[..., KeycloakTokenVerifier]
) -> None:
    verifier = make_verifier(jwks_url=issuer.jwks_url)
    assert verifier.verify(issuer.mint(groups=GROUPS)).memberships == MEMBERSHIPS
    assert issuer.requests == {"certs": 1}


def test_discovery_naming_another_issuer_is_not_trusted(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier
) -> None:
    issuer.discovery_overrides["issuer"] = "https://evil.example.org/realms/obp"
    refused(verifier, issuer.mint(groups=GROUPS))
    assert issuer.jwks_fetches == 0


def test_only_advertised_algorithms_are_accepted(clock: Clock) -> None:
    with KeycloakIssuer(clock=clock, advertised_algorithms=["PS256", "HS256"]) as realm:
        settings = KeycloakSettings(issuer=realm.issuer, authorized_parties=(CLIENT_ID,))
        verifier = KeycloakTokenVerifier(settings, clock=clock)
        try:
            refused(verifier, realm.mint(groups=GROUPS))  # RS256: not advertised
        finally:
            verifier.close()


# ==================================================================== HTTP


def test_the_realm_documents_share_one_kept_alive_connection(
    issuer: KeycloakIssuer, make_verifier: Callable[..., KeycloakTokenVerifier]
) -> None:
    verifier = make_verifier(groups_source="userinfo")
    issuer.set_groups(SUBJECT, GROUPS)
    for _ in range(3):
        assert verifier.verify(issuer.mint(SUBJECT)).memberships == MEMBERSHIPS
    assert issuer.requests == {"discovery": 1, "certs": 1, "userinfo": 3}
    assert issuer.connections == 1


def test_a_connection_the_realm_closed_is_replaced_once(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier
) -> None:
    verifier.verify(issuer.mint(groups=GROUPS))
    issuer.drop_connections()  # as a server does with an idle kept-alive connection
    time.sleep(0.05)
    issuer.rotate()
    assert verifier.verify(issuer.mint(groups=GROUPS)).memberships == MEMBERSHIPS
    assert issuer.jwks_fetches == 2
    assert issuer.connections == 2


def test_an_idle_connection_is_kept_for_a_few_seconds_only(issuer: KeycloakIssuer) -> None:
    """Older ones may have been dropped silently on the way (a NAT): a new one is opened."""
    client = JsonClient(connect_timeout=2, read_timeout=2, max_bytes=1 << 20, keepalive_seconds=0.2)
    try:
        client.get_json(issuer.discovery_url)
        client.get_json(issuer.jwks_url)
        assert issuer.connections == 1
        time.sleep(0.3)
        client.get_json(issuer.jwks_url)
        assert issuer.connections == 2
    finally:
        client.close()


def test_close_closes_the_connections_and_the_verifier_goes_on(
    issuer: KeycloakIssuer, verifier: KeycloakTokenVerifier
) -> None:
    verifier.verify(issuer.mint(groups=GROUPS))
    verifier.close()
    issuer.rotate()
    assert verifier.verify(issuer.mint(groups=GROUPS)).memberships == MEMBERSHIPS
    assert issuer.connections == 2


def test_a_document_over_the_size_limit_is_refused(
    issuer: KeycloakIssuer,
    make_verifier: Callable[..., KeycloakTokenVerifier],
    caplog: pytest.LogCaptureFixture,
) -> None:
    verifier = make_verifier(max_document_bytes=64 * 1024)
    issuer.discovery_overrides["padding"] = "x" * (64 * 1024)
    with caplog.at_level(logging.WARNING):
        refused(verifier, issuer.mint(groups=GROUPS))
    assert f"more than 65536 bytes from {issuer.discovery_url}" in caplog.text
    assert issuer.jwks_fetches == 0


class _Documents(BaseHTTPRequestHandler):
    """Serves ``/{mode}/{size}``: a JSON object of about ``size`` bytes, with a length,
    chunked, or until the connection closes; ``/redirect`` answers 302 to ``/length/10``."""

    protocol_version = "HTTP/1.1"
    requests: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).requests.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/length/10")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        _, mode, size = self.path.split("/")
        body = json.dumps({"pad": "x" * max(0, int(size) - 11)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if mode == "length":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), 1000):
                chunk = body[start : start + 1000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        else:  # until the connection closes
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True


class _DocumentServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # the client left: expected
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def documents() -> Iterator[str]:
    server = _DocumentServer(("127.0.0.1", 0), _Documents)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("mode", ["length", "chunked", "until-close"])
def test_the_size_limit_holds_however_the_body_is_framed(documents: str, mode: str) -> None:
    client = JsonClient(connect_timeout=2, read_timeout=2, max_bytes=20_000)
    try:
        assert len(client.get_json(f"{documents}/{mode}/20000")["pad"]) == 20_000 - 11
        with pytest.raises(FetchFailed, match="more than 20000 bytes"):
            client.get_json(f"{documents}/{mode}/20001")
        with pytest.raises(FetchFailed, match="more than 20000 bytes"):
            client.get_json(f"{documents}/{mode}/5000000")
        assert len(client.get_json(f"{documents}/{mode}/100")["pad"]) == 89  # usable after
    finally:
        client.close()


def test_a_redirect_is_not_followed(documents: str) -> None:
    client = JsonClient(connect_timeout=2, read_timeout=2, max_bytes=20_000)
    _Documents.requests.clear()
    try:
        with pytest.raises(FetchFailed, match=r"HTTP 302 from .*/redirect$"):
            client.get_json(f"{documents}/redirect")
        assert _Documents.requests == ["/redirect"]
    finally:
        client.close()


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "http://", "http://127.0.0.1:99999/x", "not a url"]
)
def test_an_unusable_url_fails_without_a_request(url: str) -> None:
    client = JsonClient(connect_timeout=2, read_timeout=2, max_bytes=20_000)
    with pytest.raises(FetchFailed, match="InvalidURL"):
        client.get_json(url)


# ==================================================================== settings


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"authorized_parties": ()}, "audiences or authorized_parties"),
        ({"algorithms": ("RS256", "HS256")}, "HS256"),
        ({"algorithms": ("none",)}, "none"),
        ({"algorithms": ()}, "non-empty"),
        ({"groups_source": "ldap"}, "groups_source"),
        ({"leeway_seconds": 3600}, "leeway"),
        ({"issuer": "ftp://example.org/realms/x"}, "http"),
        ({"max_token_bytes": 10}, "size"),
        ({"jwks_max_age_seconds": 10}, "max_age"),
    ],
)
def test_settings_refuse_unsafe_values(overrides: dict[str, Any], problem: str) -> None:
    base: dict[str, Any] = {
        "issuer": "https://auth.example.org/realms/obp",
        "authorized_parties": ("obp-web",),
    }
    with pytest.raises(ValueError, match=problem):
        KeycloakSettings(**{**base, **overrides})


def test_settings_normalise_the_issuer_and_single_strings() -> None:
    settings = KeycloakSettings(
        issuer="https://auth.example.org/realms/obp/",
        audiences="obp-workflow",  # type: ignore[arg-type]
    )
    assert settings.issuer == "https://auth.example.org/realms/obp"
    assert settings.audiences == ("obp-workflow",)


# ==================================================================== the module


def test_the_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, obp_workflow.adapters.keycloak.verifier as v; "
        "heavy = {'boto3', 'botocore', 'paramiko', 'pydantic', 'luigi', "
        "'aws_lambda_powertools', 'dependency_injector', 'httpx', 'requests'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_parse_groups_reads_what_the_issuer_writes() -> None:
    assert parse_groups(GROUPS) == MEMBERSHIPS
