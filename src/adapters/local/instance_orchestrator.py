"""InstanceOrchestrator of one machine: each project's workflow instance is a worker process.

``ensure`` starts ``python -m obp_workflow.entrypoints.cli worker`` (or the command given) as a
detached child (a session of its own, so a Ctrl-C of the starting process does not reach it),
with the environment an ECS task of the project carries: the given base environment (the
service's ``OBP_*`` settings) plus ``OBP_VIRTUAL_LAB_ID`` and ``OBP_PROJECT_ID``. Its standard
output and error are appended to ``$OBP_HOME/instances/<vlab>/<project>/worker.log``.

The instance is recorded beside it in ``instance.json``: its id, pid, the process's start time
(``/proc/<pid>/stat``, so a pid reused by another process is not taken for the worker), when it
started, and, once known, why it stopped. Every process of the machine sees the same record:
``ensure`` and ``stop`` hold an exclusive ``flock`` on the project's ``lock`` file while they
read and change it, so concurrent ``ensure`` calls, from threads or processes, start one worker.

Statuses: RUNNING while the process lives; STOPPING once a stop was asked and it still lives
(not live: the next ``ensure`` starts a new instance); STOPPED when it is gone, with the reason
the stop was asked for, or else how it ended (``exited with status N`` as its parent reaped
it, ``exited`` when another process started it). ``stop`` sends SIGTERM and waits up to
``stop_timeout`` seconds, then SIGKILL (as ECS does after its stop timeout); a worker stopping
its own instance (idle) only records it, and exits by itself.

The process that starts a worker reaps it (a thread waits for it), so no zombie is left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from obp_workflow.core.identity import ProjectRef
from obp_workflow.ports.instances import InstanceInfo, InstanceOrchestrator

from .private_files import private_folder

WORKER_COMMAND = (sys.executable, "-m", "obp_workflow.entrypoints.cli", "worker")
INSTANCES_FOLDER = "instances"
STATE_FILE = "instance.json"
LOG_FILE = "worker.log"
_POLL = 0.05


log = logging.getLogger(__name__)


class ProcessInstanceOrchestrator(InstanceOrchestrator):
    """One worker process per project, recorded under ``home/instances``."""

    def __init__(
        self,
        home: Path,
        environment: Mapping[str, str],
        *,
        command: Sequence[str] = WORKER_COMMAND,
        stop_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not command:
            raise ValueError("the worker command must not be empty")
        if stop_timeout <= 0:
            raise ValueError("stop_timeout must be positive")
        self._root = Path(home) / INSTANCES_FOLDER
        self._environment = dict(environment)
        self._command = list(command)
        self._stop_timeout = stop_timeout
        self._clock = clock
        self._counter = threading.Lock()
        #: The thread reaping each worker this process started, by instance id.
        self._reapers: dict[str, threading.Thread] = {}
        #: Workers this process started (a process of the machine may have started others).
        self.starts = 0

    # ------------------------------------------------------------------ the port

    def ensure(self, project: ProjectRef) -> InstanceInfo:
        with self._locked(project):
            state = self._read(project)
            if state is not None and _alive(state) and not state.get("stop_reason"):
                return _info(project, state)
            return _info(project, self._start(project))

    def describe(self, project: ProjectRef) -> InstanceInfo | None:
        state = self._read(project)
        if state is None:
            return None
        reaper = self._reapers.get(state["instance_id"])
        if reaper is not None and not state.get("ended") and not _alive(state):
            reaper.join(5.0)  # ours, just ended: its exit status is being recorded
            state = self._read(project) or state
        return _info(project, state)

    def stop(self, project: ProjectRef, reason: str) -> None:
        with self._locked(project):
            state = self._read(project)
            if state is None or not _alive(state):
                return
            if not state.get("stop_reason"):
                self._write(project, {**state, "stop_reason": reason})
                if state["pid"] != os.getpid():
                    _signal(state, signal.SIGTERM)
        if state["pid"] == os.getpid():
            return  # a worker retiring: it exits by itself once this returns
        if not self._wait_gone(state, self._stop_timeout):
            _signal(state, signal.SIGKILL)
            self._wait_gone(state, 5.0)
        reaper = self._reapers.get(state["instance_id"])
        if reaper is not None:
            reaper.join(5.0)  # its end is recorded when stop returns

    def projects(self) -> list[ProjectRef]:
        """Every project with an instance record here: a live worker, or a past one."""
        found = []
        for record in sorted(self._root.glob(f"*/*/{STATE_FILE}")):
            with contextlib.suppress(ValueError):
                found.append(ProjectRef.parse(record.parent.parent.name, record.parent.name))
        return found

    # ------------------------------------------------------------------ starting

    def _start(self, project: ProjectRef) -> dict[str, Any]:
        folder = self._folder(project)
        environment = {
            **self._environment,
            "OBP_VIRTUAL_LAB_ID": project.virtual_lab_id,
            "OBP_PROJECT_ID": project.project_id,
        }
        if environment.get("OBP_LUIGID_PORT", "0") == "0":
            # Each project's worker runs its own luigid: a free port, said where it is seen.
            environment["OBP_LUIGID_PORT"] = str(_free_port())
        log_fd = os.open(folder / LOG_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = subprocess.Popen(  # noqa: S603  (an argv from the configuration, no shell)
                self._command,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                cwd=folder,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        state: dict[str, Any] = {
            "instance_id": f"proc-{uuid.uuid4().hex[:12]}",
            "pid": process.pid,
            # Read before the reaper runs: until then the pid stays this process's, even dead.
            "process_start": _process_start(process.pid),
            "started_at": datetime.fromtimestamp(self._clock(), UTC).isoformat(),
            "stop_reason": None,
            "ended": None,
            "luigid_port": int(environment["OBP_LUIGID_PORT"]),
        }
        self._write(project, state)
        log.warning(
            "worker of project %s started (pid %d); its luigid visualiser: http://127.0.0.1:%s",
            project,
            process.pid,
            environment["OBP_LUIGID_PORT"],
        )
        reaper = threading.Thread(
            target=self._reap,
            args=(project, state["instance_id"], process),
            name=f"reap-{process.pid}",
            daemon=True,
        )
        with self._counter:
            self.starts += 1
            self._reapers[state["instance_id"]] = reaper
        reaper.start()
        return state

    def _reap(
        self, project: ProjectRef, instance_id: str, process: subprocess.Popen[bytes]
    ) -> None:
        """Wait for a started worker and record how it ended."""
        code = process.wait()
        if code >= 0:
            ended = f"exited with status {code}"
        else:
            ended = f"killed by signal {-code} ({signal.Signals(-code).name})"
        try:
            with self._locked(project, create=False):
                state = self._read(project)
                if state is not None and state["instance_id"] == instance_id:
                    self._write(project, {**state, "ended": ended})
        except FileNotFoundError:
            pass  # the record was removed meanwhile: nothing to tell
        finally:
            with self._counter:
                self._reapers.pop(instance_id, None)

    def _wait_gone(self, state: Mapping[str, Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while _alive(state):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
        return True

    # ------------------------------------------------------------------ the record

    def _where(self, project: ProjectRef) -> Path:
        return self._root / project.virtual_lab_id / project.project_id

    def _folder(self, project: ProjectRef) -> Path:
        """The project's folder, made private (with the folders above it) when missing."""
        private_folder(self._root)
        private_folder(self._root / project.virtual_lab_id)
        return private_folder(self._where(project))

    @contextlib.contextmanager
    def _locked(self, project: ProjectRef, *, create: bool = True) -> Iterator[None]:
        """The project's record, held exclusively (``create``: its folder made when missing,
        else FileNotFoundError)."""
        where = self._folder(project) if create else self._where(project)
        fd = os.open(where / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self, project: ProjectRef) -> dict[str, Any] | None:
        path = self._where(project) / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            raise ValueError(f"{path} is not an instance record: remove it") from None
        if not isinstance(state, dict) or not isinstance(state.get("pid"), int):
            raise ValueError(f"{path} is not an instance record: remove it")
        return state

    def _write(self, project: ProjectRef, state: Mapping[str, Any]) -> None:
        path = self._where(project) / STATE_FILE  # under the lock: the folder exists
        temporary = path.with_name(f".{STATE_FILE}.{uuid.uuid4().hex[:8]}.tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(temporary, path)


# ---------------------------------------------------------------------- processes


def _free_port() -> int:
    """A port free on loopback now (the worker's luigid binds it moments later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _process_start(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), None when it is gone."""
    stat = _stat(pid)
    return None if stat is None else stat[1]


def _stat(pid: int) -> tuple[str, int] | None:
    """The state letter and start time of ``pid`` from ``/proc``; None when there is none."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (command) "
    return fields[0], int(fields[19])


def _alive(state: Mapping[str, Any]) -> bool:
    """The recorded process still runs (not a zombie, not another process with its pid)."""
    stat = _stat(state["pid"])
    if stat is None:
        return False
    letter, started = stat
    return letter not in ("Z", "X", "x") and started == state.get("process_start")


def _signal(state: Mapping[str, Any], signum: signal.Signals) -> None:
    if _alive(state):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state["pid"], signum)


def _info(project: ProjectRef, state: Mapping[str, Any]) -> InstanceInfo:
    started_at = datetime.fromisoformat(state["started_at"])
    asked = state.get("stop_reason")
    if _alive(state):
        status = "STOPPING" if asked else "RUNNING"
        return InstanceInfo(project, state["instance_id"], status, started_at, asked)
    reason = asked or state.get("ended") or "exited"
    return InstanceInfo(project, state["instance_id"], "STOPPED", started_at, reason)
