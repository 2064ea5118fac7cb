"""Compact JWS with asymmetric keys, on cryptography's primitives: the keys of a JWKS and the
check of a signature.

This is the part of JOSE the token verifier needs, and no more: public keys (RSA, EC on the NIST
curves, Ed25519 and Ed448) read from their JWK, and the signature of a compact JWS checked with
one of the asymmetric algorithms of RFC 7518 and RFC 8037. Every other rule (which algorithm,
which key, the header, the claims) is the verifier's. It imports cryptography's asymmetric
primitives alone (no X.509, no PEM or SSH serialisation): the Lambda authorizer's cold start.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

PublicKey: TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
#: RSA keys shorter than this are refused (NIST SP 800-131A).
MIN_RSA_BITS = 2048

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}
#: JWK ``crv`` -> the curve, and its coordinate size in bytes.
_CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {
    "P-256": (ec.SECP256R1, 32),
    "P-384": (ec.SECP384R1, 48),
    "P-521": (ec.SECP521R1, 66),
}
#: The curve each ECDSA algorithm is defined on (RFC 7518 §3.4).
_ALGORITHM_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


class JwkError(ValueError):
    """A JWK that is not a usable public signing key; the message holds no key material."""


def b64url_decode(segment: str) -> bytes:
    """Strict unpadded base64url: padding or any character outside the alphabet is an error."""
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def canonical_b64url_decode(segment: str) -> bytes:
    """Strict unpadded base64url, in its one canonical spelling (unused trailing bits zero, no
    padding): the value re-encodes to the same text. ``ValueError`` otherwise."""
    decoded = b64url_decode(segment)
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment.encode("ascii"):
        raise ValueError("not canonical base64url")
    return decoded


def public_key(jwk: dict[str, object]) -> PublicKey:
    """The public key of one JWK (``kty`` RSA, EC or OKP); private members are ignored.

    Raises :class:`JwkError` for anything else or anything unreadable.
    """
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            n, e = _uint(jwk, "n"), _uint(jwk, "e")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kty == "EC":
            crv = jwk.get("crv")
            if not isinstance(crv, str) or crv not in _CURVES:
                raise JwkError("unsupported EC curve")
            curve, size = _CURVES[crv]
            x, y = _bytes(jwk, "x"), _bytes(jwk, "y")
            if len(x) != size or len(y) != size:
                raise JwkError("EC coordinates of the wrong size")
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve()
            )
            return numbers.public_key()
        if kty == "OKP":
            crv = jwk.get("crv")
            if crv == "Ed25519":
                return ed25519.Ed25519PublicKey.from_public_bytes(_bytes(jwk, "x"))
            if crv == "Ed448":
                return ed448.Ed448PublicKey.from_public_bytes(_bytes(jwk, "x"))
            raise JwkError("unsupported OKP curve")
    except JwkError:
        raise
    except (ValueError, TypeError, OverflowError, UnsupportedAlgorithm) as exc:
        # cryptography refuses the numbers (not on the curve, out of range, unsupported here)
        raise JwkError(f"unreadable {kty} key ({type(exc).__name__})") from None
    raise JwkError("unsupported key type")


def key_too_short(key: PublicKey) -> bool:
    """An RSA key shorter than :data:`MIN_RSA_BITS`."""
    return isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS


def signature_valid(alg: str, key: PublicKey, signing_input: bytes, signature: bytes) -> bool:
    """True when ``signature`` is ``key``'s signature of ``signing_input`` under ``alg``.

    False too when ``alg`` is not an asymmetric JWS algorithm or does not fit the key's type
    (or, for ECDSA, its curve): the caller picks the key, this never trusts the pairing.
    """
    try:
        if alg == "EdDSA":
            if not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
                return False
            key.verify(signature, signing_input)
            return True
        family, bits = alg[:2], alg[2:]
        digest_type = _HASHES.get(bits) if len(alg) == 5 else None
        if digest_type is None:
            return False
        digest = digest_type()
        if family in ("RS", "PS"):
            if not isinstance(key, rsa.RSAPublicKey):
                return False
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if family == "RS"
                else padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
            )
            key.verify(signature, signing_input, pad, digest)
            return True
        if family == "ES":
            if not isinstance(key, ec.EllipticCurvePublicKey):
                return False
            if key.curve.name != _ALGORITHM_CURVES[alg]:
                return False
            size = (key.curve.key_size + 7) // 8
            if len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(digest))
            return True
    except InvalidSignature:
        return False
    return False


def _bytes(jwk: dict[str, object], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise JwkError(f"no usable {name!r}")
    return b64url_decode(value)


def _uint(jwk: dict[str, object], name: str) -> int:
    return int.from_bytes(_bytes(jwk, name), "big")
