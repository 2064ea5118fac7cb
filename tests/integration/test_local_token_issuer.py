"""The local issuer's tokens through the production KeycloakTokenVerifier, over HTTP.

The issuer's discovery document and JWKS are served on loopback (``IssuerServer``); the verifier
finds the keys through discovery. Good tokens become their Principal, and the access table then
decides; expired, tampered and foreign tokens are refused. The signing key is made once, kept
private, and agreed on by processes racing to make it.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from obp_workflow.adapters.keycloak.verifier import KeycloakSettings, KeycloakTokenVerifier
from obp_workflow.adapters.local.token_issuer import (
    CLIENT_ID,
    KEY_FILE,
    KEY_FOLDER,
    LocalTokenIssuer,
    issuer_url,
    mint_token,
    subject_of,
)
from obp_workflow.core.errors import NotFound, Unauthenticated
from obp_workflow.core.identity import Action, ProjectRef, authorize
from tests.contract.harness_local_issuer import IssuerServer

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
MINE = ProjectRef.parse(VLAB, "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20")
OTHER = ProjectRef.parse(VLAB, "9c0d1e2f-3a4b-4c5d-8e6f-7a8b9c0d1e2f")
MEMBER_OF_MINE = f"/proj/{VLAB}/{MINE.project_id}/member"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[IssuerServer]:
    served = IssuerServer(tmp_path / "home")
    try:
        yield served
    finally:
        served.close()


def verifier_for(issuer: str) -> KeycloakTokenVerifier:
    return KeycloakTokenVerifier(KeycloakSettings(issuer=issuer, authorized_parties=(CLIENT_ID,)))


def mint(issuer: LocalTokenIssuer, *groups: str, lifetime: float = 300) -> str:
    return issuer.mint(
        subject="3f1c2a9e-0000-4000-8000-00000000a11c",
        username="ada",
        groups=groups,
        lifetime_seconds=lifetime,
    )


def refused(verifier: KeycloakTokenVerifier, token: str) -> bool:
    try:
        verifier.verify(token)
    except Unauthenticated:
        return True
    return False


def test_a_minted_token_is_its_principal_and_the_access_table_decides(
    server: IssuerServer,
) -> None:
    verifier = verifier_for(server.issuer.issuer)
    try:
        principal = verifier.verify(mint(server.issuer, MEMBER_OF_MINE))
    finally:
        verifier.close()
    assert principal.subject == "3f1c2a9e-0000-4000-8000-00000000a11c"
    assert principal.username == "ada"
    authorize(principal, MINE, Action.SUBMIT)
    with pytest.raises(NotFound):  # a group of another project grants nothing here
        authorize(principal, OTHER, Action.SUBMIT)
    # The verifier read discovery, then the JWKS it names.
    assert server.requests == [server.issuer.discovery_path, server.issuer.jwks_path]


def test_claims_are_those_of_a_keycloak_access_token(server: IssuerServer) -> None:
    token = mint(server.issuer, MEMBER_OF_MINE, lifetime=120)
    header, payload = (json.loads(_b64(part)) for part in token.split(".")[:2])
    assert header == {"alg": "RS256", "kid": server.issuer.kid, "typ": "JWT"}
    assert payload["iss"] == f"http://127.0.0.1:{server.server_port}/realms/obp"
    assert payload["azp"] == CLIENT_ID
    assert payload["typ"] == "Bearer"
    assert payload["groups"] == [MEMBER_OF_MINE]
    assert payload["exp"] - payload["iat"] == 120
    assert abs(payload["iat"] - time.time()) < 5


def test_expired_tampered_and_foreign_tokens_are_refused(
    server: IssuerServer, tmp_path: Path
) -> None:
    verifier = verifier_for(server.issuer.issuer)
    try:
        good = mint(server.issuer, MEMBER_OF_MINE)
        assert not refused(verifier, good)
        # Expired an hour ago (well past the verifier's leeway).
        past = LocalTokenIssuer(
            tmp_path / "home", server.issuer.issuer, clock=lambda: time.time() - 7200
        )
        assert refused(verifier, mint(past, MEMBER_OF_MINE, lifetime=3600))
        # Another project's group spliced into a good token's payload, signature kept.
        head, payload, signature = good.split(".")
        claims = json.loads(_b64(payload))
        claims["groups"] = [f"/proj/{VLAB}/{OTHER.project_id}/admin"]
        forged = ".".join([head, _b64e(json.dumps(claims).encode()), signature])
        assert refused(verifier, forged)
        # Signed with another home's key under the same issuer URL and the same kid.
        stranger = LocalTokenIssuer(tmp_path / "other-home", server.issuer.issuer)
        assert stranger.kid != server.issuer.kid
        stranger.kid = server.issuer.kid
        assert refused(verifier, mint(stranger, MEMBER_OF_MINE))
        # Minted for another realm URL.
        elsewhere = LocalTokenIssuer(tmp_path / "home", issuer_url("127.0.0.1", 1))
        assert refused(verifier, mint(elsewhere, MEMBER_OF_MINE))
        # For another client.
        other_client = LocalTokenIssuer(
            tmp_path / "home", server.issuer.issuer, client_id="someone-else"
        )
        assert refused(verifier, mint(other_client, MEMBER_OF_MINE))
    finally:
        verifier.close()


def test_the_key_outlives_the_issuer_and_stays_private(server: IssuerServer) -> None:
    home = server.home
    token = mint(server.issuer, MEMBER_OF_MINE)
    again = LocalTokenIssuer(home, server.issuer.issuer)
    assert again.kid == server.issuer.kid
    assert again.jwks() == server.issuer.jwks()
    verifier = verifier_for(server.issuer.issuer)
    try:
        assert verifier.verify(token).username == "ada"
        assert verifier.verify(mint(again, MEMBER_OF_MINE)).username == "ada"
    finally:
        verifier.close()
    folder = home / KEY_FOLDER
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / KEY_FILE).stat().st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir()) == [KEY_FILE]
    assert "PRIVATE KEY" not in json.dumps([again.jwks(), again.discovery(), repr(again)])


def test_a_key_others_may_read_is_refused_in_one_line(tmp_path: Path) -> None:
    issuer = LocalTokenIssuer(tmp_path, issuer_url("127.0.0.1", 8080))
    key = tmp_path / KEY_FOLDER / KEY_FILE
    os.chmod(key, 0o644)
    with pytest.raises(ValueError, match="chmod 600") as caught:
        LocalTokenIssuer(tmp_path, issuer.issuer)
    assert "\n" not in str(caught.value)


def test_processes_racing_to_make_the_key_agree_on_one(tmp_path: Path) -> None:
    home = tmp_path / "raced"
    script = (
        "import sys, pathlib, time\n"
        "from obp_workflow.adapters.local.token_issuer import LocalTokenIssuer\n"
        "while time.time() < float(sys.argv[2]): pass\n"
        "print(LocalTokenIssuer(pathlib.Path(sys.argv[1]), 'http://127.0.0.1:1/realms/obp').kid)\n"
    )
    start = str(time.time() + 1.5)
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(home), start], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    kids = {racer.communicate(timeout=60)[0].strip() for racer in racers}
    assert all(racer.returncode == 0 for racer in racers)
    assert kids == {LocalTokenIssuer(home, "http://127.0.0.1:1/realms/obp").kid}
    assert sorted(p.name for p in (home / KEY_FOLDER).iterdir()) == [KEY_FILE]


def test_bad_input_is_refused_in_one_line(tmp_path: Path) -> None:
    issuer = LocalTokenIssuer(tmp_path, issuer_url("127.0.0.1", 8080))
    for kwargs in (
        {"groups": ["proj/no-leading-slash"]},
        {"groups": ["/proj/with space/member"]},
        {"lifetime_seconds": 0},
        {"lifetime_seconds": 10**9},
        {"username": " "},
    ):
        arguments = {"subject": "s", "username": "ada", **kwargs}
        with pytest.raises(ValueError, match=r"group|lifetime|username") as caught:
            issuer.mint(**arguments)  # type: ignore[arg-type]
        assert "\n" not in str(caught.value)
    for bad in ("ftp://x/realms/obp", "http://u:p@x/realms/obp", "not a url"):
        with pytest.raises(ValueError, match="the issuer must be"):
            LocalTokenIssuer(tmp_path, bad)


def test_the_token_command_prints_a_token_the_verifier_accepts(server: IssuerServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "obp_workflow.entrypoints.cli",
            "token",
            "--group",
            MEMBER_OF_MINE,
            "--username",
            "grace",
            "--lifetime",
            "60",
            "--issuer",
            server.issuer.issuer,
        ],
        env={**env, "OBP_HOME": str(server.home)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    verifier = verifier_for(server.issuer.issuer)
    try:
        principal = verifier.verify(token)
    finally:
        verifier.close()
    assert principal.username == "grace"
    assert principal.subject == subject_of("grace", server.issuer.issuer)
    authorize(principal, MINE, Action.READ)
    assert token.count(".") == 2
    same = mint_token(server.home, server.issuer.issuer, [], username="grace")
    assert json.loads(_b64(same.split(".")[1]))["sub"] == principal.subject


def test_the_token_command_without_a_home_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
    out = subprocess.run(
        [sys.executable, "-m", "obp_workflow.entrypoints.cli", "token", "--group", "/x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: give --home or set OBP_HOME"


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64e(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
