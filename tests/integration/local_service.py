"""``obp-workflow serve`` in one process and the client commands in others, as documented, run
as an unprivileged user (``tests/local_user.py``) in a fresh ``OBP_HOME``: what the tests of the
one-machine service share."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.local_user import REPO, AsUser, processes_in, stop_everything_in, user_folder

EXAMPLE = REPO / "examples" / "lif-network.json"


@dataclass
class Service:
    """One ``serve`` process, its folder, and the client commands pointed at it."""

    user: AsUser
    folder: Path
    settings: dict[str, str]
    vlab: str = field(default_factory=lambda: str(uuid.uuid4()))
    project: str = field(default_factory=lambda: str(uuid.uuid4()))
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    issuer: str = ""
    token: str = ""

    @property
    def home(self) -> Path:
        return self.folder / "obp-home"

    @property
    def log(self) -> Path:
        return self.folder / "serve.log"

    def env(self, **extra: str) -> dict[str, str]:
        return self.user.env(
            self.folder / "user", OBP_HOME=str(self.home), **self.settings, **extra
        )

    def client_env(self) -> dict[str, str]:
        return self.env(
            OBP_API_URL=self.url,
            OBP_TOKEN=self.token,
            OBP_VIRTUAL_LAB_ID=self.vlab,
            OBP_PROJECT_ID=self.project,
        )

    # ------------------------------------------------------------ serve

    def serve(self, port: int = 0, timeout: float = 60) -> None:
        """``obp-workflow serve --port PORT``; its URL and issuer read from what it prints."""
        assert self.process is None
        said = self.log.stat().st_size if self.log.exists() else 0
        self.process = self.user.popen(
            ["obp-workflow", "serve", "--port", str(port)], self.env(), self.log
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text(errors="replace")[said:]
            url = re.search(r"export OBP_API_URL=(\S+?);", text)
            issuer = re.search(r"token --issuer (\S+) ", text)
            if url and issuer:
                self.url, self.issuer = url.group(1), issuer.group(1)
                return
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}: {text}")
            time.sleep(0.1)
        raise AssertionError(f"serve printed no URL within {timeout:.0f} s: {self.log.read_text()}")

    def stop(self) -> int:
        """SIGTERM to serve, as a terminal's Ctrl-C or a service manager does; its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        finally:
            self.process = None
        return code

    # ------------------------------------------------------------ the client

    def cli(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.user.run(["obp-workflow", *argv], self.client_env(), timeout=timeout)

    def ok(self, *argv: str, timeout: float = 60) -> str:
        done = self.cli(*argv, timeout=timeout)
        assert done.returncode == 0, f"obp-workflow {' '.join(argv)}: {done.stderr}{done.stdout}"
        return done.stdout

    def log_in(self) -> None:
        """``export OBP_TOKEN=$(obp-workflow token --issuer URL --group /proj/V/P/member)``."""
        group = f"/proj/{self.vlab}/{self.project}/member"
        minted = self.user.run(
            ["obp-workflow", "token", "--issuer", self.issuer, "--group", group], self.env()
        )
        assert minted.returncode == 0, minted.stderr
        self.token = minted.stdout.strip()

    def submit(self, request: Path = EXAMPLE) -> str:
        out = self.ok(
            "submit",
            str(request.relative_to(REPO)) if request.is_relative_to(REPO) else str(request),
        )
        run_id = out.strip().splitlines()[-1]
        assert re.fullmatch(r"[0-9a-f-]{36}", run_id), out
        return run_id

    def run(self, run_id: str) -> Mapping[str, Any]:
        data: Mapping[str, Any] = json.loads(self.ok("status", run_id, "--json"))
        return data

    def wait_for(self, run_id: str, state: str, timeout: float = 60) -> Mapping[str, Any]:
        deadline = time.monotonic() + timeout
        run = self.run(run_id)
        while run["state"] != state and time.monotonic() < deadline:
            assert not run["terminal"], f"the run ended {run['state']} before {state}: {run}"
            time.sleep(0.2)
            run = self.run(run_id)
        assert run["state"] == state, f"the run is {run['state']} after {timeout:.0f} s"
        return run

    # ------------------------------------------------------------ what is on disk

    def run_folder(self, run_id: str) -> Path:
        return self.home / "cluster" / "runs" / run_id

    def job_records(self) -> list[dict[str, Any]]:
        """The local scheduler's accounting: one record per job it ever started."""
        folder = self.home / "cluster" / "runs" / ".scheduler" / "accounting"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]

    def live_record(self, job_id: str) -> dict[str, Any]:
        path = self.home / "cluster" / "runs" / ".scheduler" / "jobs" / f"{job_id}.json"
        record: dict[str, Any] = json.loads(path.read_text())
        return record


@contextlib.contextmanager
def service(user: AsUser, **settings: str) -> Iterator[Service]:
    """A fresh folder of the user's with a ``Service`` (not yet serving); on leaving, serve is
    stopped and no process started in the folder is left (a leftover is a failure)."""
    with user_folder(user) as folder:
        home = folder / "user"
        home.mkdir(mode=0o700)
        os.chown(home, user.uid, user.gid)
        running = Service(user, folder, {"OBP_WORKER_POLL_SECONDS": "0.25", **settings})
        try:
            yield running
        finally:
            if running.process is not None:
                running.stop()
            # serve stops its workers on exit; only the jobs of the cluster may outlive it.
            time.sleep(0.5)
            left = [_describe(pid) for pid in processes_in(folder)]
            stop_everything_in(folder)
        assert not left, f"processes left behind: {left}\nserve's log:\n{_tail(running.log)}"


def _describe(pid: int) -> str:
    with contextlib.suppress(OSError):
        return f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return str(pid)


def _tail(path: Path, lines: int = 40) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )
