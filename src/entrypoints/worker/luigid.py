"""The worker's own luigid, on loopback: the central scheduler its builds report to, and the
visualiser that shows each run's steps.

luigid holds no state the service relies on (every step's ``complete()`` reads the run
repository), so its state file lives in a throw-away folder. Its configuration is what the
worker's short builds need (``docs/architecture.md``, "The workflow container"): a task built
again right after it ran must be looked at again (``stable_done_cooldown_secs = 0``), and a
failed step may be retried by the next build at once (``retry_delay``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("obp_workflow.worker")

CONFIG = """\
[scheduler]
stable_done_cooldown_secs = 0
retry_delay = 1
remove_delay = 120
worker_disconnect_delay = 30
record_task_history = false
"""


class LuigidFailed(RuntimeError):
    pass


class Luigid:
    """A luigid process bound to 127.0.0.1; ``port`` 0 picks a free one."""

    def __init__(self, port: int = 8082, *, start_timeout: float = 20.0) -> None:
        self.requested_port = port
        self.start_timeout = start_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._folder: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Luigid:
        self._folder = Path(tempfile.mkdtemp(prefix="obp-luigid-"))
        (self._folder / "logs").mkdir()
        config = self._folder / "luigid.cfg"
        config.write_text(CONFIG)
        self.port = self.requested_port or _free_port()
        executable = shutil.which("luigid", path=str(Path(sys.executable).parent)) or "luigid"
        environment = {**os.environ, "LUIGI_CONFIG_PATH": str(config)}
        self.process = subprocess.Popen(  # noqa: S603  (a fixed argv, no shell)
            [
                executable,
                "--address",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--logdir",
                str(self._folder / "logs"),
                "--state-path",
                str(self._folder / "state.pickle"),
            ],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's ^C goes to the worker, which stops luigid
            # luigid gets SIGTERM when the worker dies, even by SIGKILL: never left behind.
            preexec_fn=_parent_death_signal(),  # noqa: PLW1509  (only a C call in the child)
        )
        deadline = time.monotonic() + self.start_timeout
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LuigidFailed(f"luigid did not start on 127.0.0.1:{self.port}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _parent_death_signal() -> Callable[[], object] | None:
    """Linux's ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, looked up in the parent: the child, between
    fork and exec, only calls it (no import, no lock that another thread could hold)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1
    return functools.partial(prctl, pr_set_pdeathsig, int(signal.SIGTERM))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
