"""A real moto server on loopback, started by the tests themselves (AWS: DynamoDB, ECS, S3,
Secrets Manager, STS). One server per test session; ``reset()`` empties it between tests.

Use the ``moto_server`` fixture (registered in ``tests/conftest.py``); adapters under test get
``MotoServer.endpoint`` as their endpoint URL override and ``MotoServer.client_config()`` so
that moto's 500s are not retried.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from botocore.config import Config

REGION = "us-east-1"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MotoServer:
    endpoint: str
    process: subprocess.Popen[bytes]

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).read()

    def set_ecs_transitions(self, times: int) -> None:
        """ECS tasks advance one status per describe call; make them take ``times`` calls."""
        body = (
            b'{"model_name": "ecs::task", "transition": {"progression": "manual", "times": '
            + str(times).encode()
            + b"}}"
        )
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/state-manager/set-transition", data=body, method="POST"
        )
        urllib.request.urlopen(request, timeout=10).read()

    @staticmethod
    def client_config() -> Config:
        return Config(region_name=REGION, retries={"max_attempts": 1, "mode": "standard"})

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_moto(log_dir: Path) -> MotoServer:
    for name, value in CREDENTIALS.items():
        os.environ.setdefault(name, value)
    port = _free_port()
    executable = Path(sys.executable).with_name("moto_server")
    log = (log_dir / "moto_server.log").open("wb")
    process = subprocess.Popen(
        [str(executable), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}; see {log.name}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).read()
            return MotoServer(endpoint, process)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("moto_server did not answer within 30 s")
