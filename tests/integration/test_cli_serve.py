"""`obp-workflow serve`: the API over real HTTP from the command line, as a person runs it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

VLAB, PROJECT = str(uuid.uuid4()), str(uuid.uuid4())
TOKEN = "local-dev-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served() -> Iterator[str]:
    port = _free_port()
    cli = Path(sys.executable).with_name("obp-workflow")
    process = subprocess.Popen(
        [
            str(cli),
            "serve",
            "--port",
            str(port),
            "--dev-token",
            TOKEN,
            "--dev-groups",
            f"/proj/{VLAB}/{PROJECT}/member",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v1/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("obp-workflow serve did not answer within 30 s")
        yield url
    finally:
        process.terminate()
        process.wait(10)


def test_serve_answers_with_the_dev_token_and_refuses_others(served: str) -> None:
    runs = f"{served}/v1/virtual-labs/{VLAB}/projects/{PROJECT}/runs"
    body = {"command": ["neurodamus", "--tstop", "10"]}
    accepted = httpx.post(runs, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert accepted.status_code == 202
    run_id = accepted.json()["run_id"]
    got = httpx.get(f"{runs}/{run_id}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert got.status_code == 200
    assert got.json()["state"] == "ACCEPTED"
    refused = httpx.get(runs, headers={"Authorization": "Bearer someone-else"})
    assert refused.status_code == 401
