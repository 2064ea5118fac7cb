"""The JWS signature checks of the Keycloak adapter, against PyJWT as the reference.

Every asymmetric algorithm: what PyJWT signs, ``jws`` accepts, with the key read from the JWK
PyJWT writes; any change to the signed text or the signature, any other key, any other
algorithm for the key, is refused, as PyJWT refuses it.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from obp_workflow.adapters.keycloak import jws

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_RSA_SHORT = rsa.generate_private_key(public_exponent=65537, key_size=1024)
_EC = {
    "ES256": ec.generate_private_key(ec.SECP256R1()),
    "ES384": ec.generate_private_key(ec.SECP384R1()),
    "ES512": ec.generate_private_key(ec.SECP521R1()),
}
_ED25519 = ed25519.Ed25519PrivateKey.generate()
_ED448 = ed448.Ed448PrivateKey.generate()

#: (algorithm, private key) for every algorithm the verifier may accept.
SIGNERS: list[tuple[str, Any]] = [
    *((f"{family}{bits}", _RSA) for family in ("RS", "PS") for bits in (256, 384, 512)),
    *_EC.items(),
    ("EdDSA", _ED25519),
    ("EdDSA", _ED448),
]
IDS = [f"{alg}-{type(key).__name__}" for alg, key in SIGNERS]


def jwk_of(private: Any) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        text = RSAAlgorithm.to_jwk(public)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        text = ECAlgorithm.to_jwk(public)
    else:
        text = OKPAlgorithm.to_jwk(public)
    result: dict[str, Any] = json.loads(text)
    return result


def parts(token: str) -> tuple[bytes, bytes]:
    signing_input, _, signature = token.rpartition(".")
    return signing_input.encode(), jws.b64url_decode(signature)


def pyjwt_accepts(token: str, private: Any, alg: str) -> bool:
    try:
        jwt.api_jws.decode(token, private.public_key(), algorithms=[alg])
    except jwt.PyJWTError:
        return False
    return True


@pytest.mark.parametrize(("alg", "private"), SIGNERS, ids=IDS)
def test_what_pyjwt_signs_is_accepted(alg: str, private: Any) -> None:
    token = jwt.encode({"sub": "bob"}, private, algorithm=alg)
    key = jws.public_key(jwk_of(private))
    assert jws.signature_valid(alg, key, *parts(token))


SIGNED = [
    jwt.encode({"sub": "bob", "groups": ["/vlab/x/admin"]}, private, algorithm=alg)
    for alg, private in SIGNERS
]


@pytest.mark.parametrize("n", range(len(SIGNERS)), ids=IDS)
@settings(deadline=None)
@given(data=st.data())
def test_any_change_to_a_signed_token_is_refused_as_pyjwt_refuses_it(
    n: int, data: st.DataObject
) -> None:
    alg, private = SIGNERS[n]
    signing_input, signature = parts(SIGNED[n])
    key = jws.public_key(jwk_of(private))
    which = data.draw(st.sampled_from(["input", "signature"]))
    target = signing_input if which == "input" else signature
    index = data.draw(st.integers(0, len(target) - 1))
    bit = data.draw(st.integers(0, 7))
    changed = bytearray(target)
    changed[index] ^= 1 << bit
    if which == "input":
        assert not jws.signature_valid(alg, key, bytes(changed), signature)
    else:
        assert not jws.signature_valid(alg, key, signing_input, bytes(changed))
        spelled = jwt.utils.base64url_encode(bytes(changed)).decode()
        assert not pyjwt_accepts(f"{signing_input.decode()}.{spelled}", private, alg)


@pytest.mark.parametrize(("alg", "private"), SIGNERS, ids=IDS)
def test_another_key_of_the_same_kind_is_refused(alg: str, private: Any) -> None:
    token = jwt.encode({"sub": "bob"}, private, algorithm=alg)
    other = {
        rsa.RSAPrivateKey: _RSA_OTHER,
        ec.EllipticCurvePrivateKey: ec.generate_private_key(private.curve)
        if isinstance(private, ec.EllipticCurvePrivateKey)
        else None,
        ed25519.Ed25519PrivateKey: ed25519.Ed25519PrivateKey.generate(),
        ed448.Ed448PrivateKey: ed448.Ed448PrivateKey.generate(),
    }
    kind = next(k for k in other if isinstance(private, k))
    key = jws.public_key(jwk_of(other[kind]))
    assert not jws.signature_valid(alg, key, *parts(token))


@pytest.mark.parametrize(("alg", "private"), SIGNERS, ids=IDS)
def test_a_key_is_used_only_with_its_own_algorithms(alg: str, private: Any) -> None:
    """The signature of one algorithm never passes as another's, whatever the key."""
    token = jwt.encode({"sub": "bob"}, private, algorithm=alg)
    signing_input, signature = parts(token)
    for other_alg, other_private in SIGNERS:
        key = jws.public_key(jwk_of(other_private))
        expected = other_alg == alg and other_private is private
        assert jws.signature_valid(other_alg, key, signing_input, signature) == expected
    key = jws.public_key(jwk_of(private))
    for nonsense in ("HS256", "none", "RS1", "ES256K", "RS2560", "", "EdDSA2"):
        assert not jws.signature_valid(nonsense, key, signing_input, signature)


def test_an_ecdsa_signature_of_the_wrong_length_is_refused() -> None:
    private = _EC["ES256"]
    signing_input, signature = parts(jwt.encode({"sub": "bob"}, private, algorithm="ES256"))
    key = jws.public_key(jwk_of(private))
    for wrong in (signature[:-1], signature + b"\0", b"\0" + signature[:-1], b""):
        assert not jws.signature_valid("ES256", key, signing_input, wrong)


def test_a_short_rsa_key_is_flagged() -> None:
    assert jws.key_too_short(jws.public_key(jwk_of(_RSA_SHORT)))
    assert not jws.key_too_short(jws.public_key(jwk_of(_RSA)))
    assert not jws.key_too_short(jws.public_key(jwk_of(_EC["ES256"])))


def test_private_members_of_a_jwk_are_ignored() -> None:
    private_jwk = json.loads(RSAAlgorithm.to_jwk(_RSA))
    assert "d" in private_jwk
    key = jws.public_key(private_jwk)
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.public_numbers() == _RSA.public_key().public_numbers()


@pytest.mark.parametrize(
    "entry",
    [
        {"kty": "oct", "k": "c2VjcmV0"},
        {"kty": "RSA", "n": "!!", "e": "AQAB"},
        {"kty": "RSA", "e": "AQAB"},
        {"kty": "RSA", "n": "", "e": "AQAB"},
        {"kty": "RSA", "n": 12345, "e": "AQAB"},
        {"kty": "RSA", "n": "AQAB", "e": "AQAB"},  # a 17-bit modulus
        {**jwk_of(_EC["ES256"]), "crv": "P-384"},  # coordinates of another size
        {**jwk_of(_EC["ES256"]), "y": jwk_of(_EC["ES256"])["x"]},  # not on the curve
        {**jwk_of(_EC["ES256"]), "crv": "secp256k1"},
        {"kty": "EC", "crv": "P-256", "x": "AA"},
        {"kty": "OKP", "crv": "X25519", "x": jwk_of(_ED25519)["x"]},
        {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
        {"kty": "OKP", "crv": "Ed448", "x": jwk_of(_ED25519)["x"]},
        {},
    ],
    ids=lambda entry: json.dumps(entry)[:60],
)
def test_an_unusable_jwk_is_a_jwk_error(entry: dict[str, Any]) -> None:
    with pytest.raises(jws.JwkError):
        jws.public_key(entry)


@pytest.mark.parametrize(
    ("segment", "canonical"),
    [("", True), ("QQ", True), ("QR", False), ("QUI", True), ("QUJ", False), ("Q", False)],
)
def test_only_the_canonical_spelling_of_base64url_is_read(segment: str, canonical: bool) -> None:
    if canonical:
        assert jws.canonical_b64url_decode(segment) == jws.b64url_decode(segment)
    else:
        with pytest.raises(ValueError, match="base64url"):
            jws.canonical_b64url_decode(segment)


@pytest.mark.parametrize("segment", ["QQ==", "Q+", "Q/", "Q Q", "Q\nQ", "QQ.", "é"])
def test_base64url_is_strict(segment: str) -> None:
    with pytest.raises(ValueError, match="base64url"):
        jws.b64url_decode(segment)
