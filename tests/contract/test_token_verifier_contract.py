"""The TokenVerifier contract: a good token is a Principal; a bad one says nothing of itself."""

from __future__ import annotations

import pytest

from obp_workflow.core.errors import Unauthenticated
from obp_workflow.core.identity import Membership, Principal, Role
from tests.contract.harness import PROJECT_A, TokenVerifierHarness

ALICE = Principal(
    subject="3f1c2a9e-0000-4000-8000-00000000a11c",
    username="alice",
    memberships=frozenset(
        {
            Membership(PROJECT_A.virtual_lab_id, None, Role.MEMBER),
            Membership(PROJECT_A.virtual_lab_id, PROJECT_A.project_id, Role.ADMIN),
        }
    ),
)
JWT_LIKE = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0xIn0."
    "eyJzdWIiOiJtYWxsb3J5IiwiZXhwIjo0MTAyNDQ0ODAwfQ."
    "c2lnbmF0dXJlLXRoYXQtZG9lcy1ub3QtdmVyaWZ5"
)


def bad_tokens(good: str) -> dict[str, str]:
    return {
        "unknown": "tok-unknown-Qm3Xa91LfR",
        "empty": "",
        "blank": "   ",
        "garbage": "\x00\xff<script>alert(1)</script>",
        "jwt-unsigned": JWT_LIKE,
        "jwt-alg-none": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.",
        "bearer-prefixed": "Bearer " + good,
        "trailing-space": good + " ",
        "truncated": good[:-1],
        "one-char-changed": good[:-1] + ("x" if good[-1] != "x" else "y"),
        "doubled": good + good,
        "long": "A" * 20_000,
        "unicode": "jeton-été-🙂",
    }


def test_a_known_token_is_its_principal(token_verifier_harness: TokenVerifierHarness) -> None:
    h = token_verifier_harness
    token = h.issue(ALICE)
    got = h.verifier.verify(token)
    assert got.subject == ALICE.subject
    assert got.username == ALICE.username
    assert got.memberships == ALICE.memberships
    assert token not in repr(got)


@pytest.mark.parametrize("kind", sorted(bad_tokens("x" * 20)))
def test_a_bad_token_is_unauthenticated_and_reveals_nothing(
    token_verifier_harness: TokenVerifierHarness, kind: str
) -> None:
    h = token_verifier_harness
    good = h.issue(ALICE)
    token = bad_tokens(good)[kind]
    with pytest.raises(Unauthenticated) as caught:
        h.verifier.verify(token)
    shown = " ".join([str(caught.value), repr(caught.value), *map(str, caught.value.args)])
    for secret in (token.strip(), good):
        for i in range(max(len(secret) - 7, 1)):
            piece = secret[i : i + 8]
            assert len(piece) < 8 or piece not in shown, f"the error shows {piece!r}"
    assert ALICE.username not in shown
    assert ALICE.subject not in shown


def test_every_bad_token_gets_the_same_answer(token_verifier_harness: TokenVerifierHarness) -> None:
    h = token_verifier_harness
    messages = set()
    for token in bad_tokens(h.issue(ALICE)).values():
        with pytest.raises(Unauthenticated) as caught:
            h.verifier.verify(token)
        messages.add(str(caught.value))
    assert len(messages) == 1, messages
