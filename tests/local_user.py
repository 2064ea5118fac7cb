"""The command line as an unprivileged user runs it: ``obp-workflow`` from the repository's
``.venv`` on ``PATH``, as the system user ``obp-e2e`` (made when missing) with a home folder of
its own in a temporary folder it owns.

The tests run as root here and in CI; running as root would hide what a user meets (a folder
it cannot write, a key it cannot read). When this process is not root it already is such a
user, and the commands run as it.

The interpreter of ``.venv`` may live in a folder other users cannot enter (pyenv under a
``/root`` of mode 0700). Then each command runs in a mount namespace of its own where that
folder is a fresh tmpfs showing only the interpreter's prefix and the repository, bound in
place, read as they are: nothing of the machine changes, and nothing is copied. A path the user
still cannot read is a failure that names it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
USER = "obp-e2e"


@dataclass
class AsUser:
    """Runs commands as ``name`` (uid, gid), with ``prefix`` before each command line."""

    name: str
    uid: int
    gid: int
    prefix: list[str]
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """A user's environment: the venv on PATH (as after ``source .venv/bin/activate``)."""
        return {
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "USER": self.name,
            "LOGNAME": self.name,
            "LANG": "C.UTF-8",
            "COLUMNS": "250",
            "TMPDIR": str(home),
            **extra,
        }

    def run(
        self, argv: Sequence[str], env: Mapping[str, str], timeout: float = 60, cwd: Path = REPO
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *argv],
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(
        self, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path = REPO
    ) -> subprocess.Popen[bytes]:
        """A long-running command in a session of its own, its output into ``log``."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                [*self.prefix, *argv],
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(process)
        return process


def _root_user() -> AsUser:
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
             "/nonexistent", "--shell", "/usr/sbin/nologin", USER],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        entry = pwd.getpwnam(USER)
    uid, gid = entry.pw_uid, entry.pw_gid
    drop = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    needed = [Path(sys.base_prefix).resolve(), REPO]
    hidden = [(blocked, path) for path in needed if (blocked := _closed_ancestor(path, uid, gid))]
    if not hidden:
        return AsUser(USER, uid, gid, drop)
    namespace = ["unshare", "--mount", "--propagation", "private", "--"]
    return AsUser(
        USER, uid, gid, [*namespace, "sh", "-c", _exposing(hidden) + ' exec "$@"', "sh", *drop]
    )


def _closed_ancestor(path: Path, uid: int, gid: int) -> Path | None:
    """The first folder above ``path`` the user cannot enter, if any."""
    for folder in [*reversed(path.parents)][1:]:
        info = folder.stat()
        bit = stat.S_IXUSR if info.st_uid == uid else stat.S_IXGRP if info.st_gid == gid else 0
        if not info.st_mode & (bit | stat.S_IXOTH):
            return folder
    return None


def _exposing(hidden: list[tuple[Path, Path]]) -> str:
    """Shell lines (run as root, in the new mount namespace) that put a tmpfs over each closed
    folder and bind the paths needed below it back in place."""
    lines = ["set -e;"]
    for i, (_, path) in enumerate(hidden):
        lines.append(f"s{i}=$(mktemp -d); mount --bind {shlex.quote(str(path))} $s{i};")
    for closed in sorted({c for c, _ in hidden}):
        lines.append(f"mount -t tmpfs -o mode=755,size=1m obp-e2e {shlex.quote(str(closed))};")
    for i, (_, path) in enumerate(hidden):
        quoted = shlex.quote(str(path))
        lines.append(f"mkdir -p {quoted}; mount --bind $s{i} {quoted}; umount $s{i}; rmdir $s{i};")
    return " ".join(lines)


def unprivileged() -> AsUser:
    """The user the tests run the command line as, checked able to start it."""
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        user = AsUser(me.pw_name, me.pw_uid, me.pw_gid, [])
    else:
        user = _root_user()
    with tempfile.TemporaryDirectory() as scratch:
        home = Path(scratch)
        os.chown(home, user.uid, user.gid)
        probe = user.run(
            ["obp-workflow", "--help"], user.env(home), timeout=60, cwd=Path("/")
        )  # fmt: skip
    assert probe.returncode == 0, (
        f"user {user.name} cannot start {VENV_BIN / 'obp-workflow'} (the repository, its .venv "
        f"and the interpreter's {sys.base_prefix} must be readable by that user; a folder "
        f"closed to others above them is shown through a mount namespace, which needs root): "
        f"{probe.stderr.strip()[-500:]}"
    )
    return user


@contextlib.contextmanager
def user_folder(user: AsUser) -> Iterator[Path]:
    """A new folder in the system's temporary folder, owned by the user (mode 0700); removed
    with what is in it after every process started in it is gone."""
    folder = Path(tempfile.mkdtemp(prefix="obp-e2e-", dir="/tmp"))
    os.chown(folder, user.uid, user.gid)
    try:
        yield folder
    finally:
        stop_everything_in(folder)
        shutil.rmtree(folder, ignore_errors=True)


def processes_in(folder: Path) -> list[int]:
    """Every process whose working folder or ``OBP_HOME`` is in ``folder``: the service, its
    workers, the jobs' wrappers and the jobs."""
    found = []
    mark = f"OBP_HOME={folder}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cwd = os.readlink(entry / "cwd")
            if cwd == str(folder) or cwd.startswith(f"{folder}/"):
                found.append(int(entry.name))
                continue
            if any(v.startswith(mark) for v in (entry / "environ").read_bytes().split(b"\0")):
                found.append(int(entry.name))
    return found


def stop_everything_in(folder: Path) -> list[int]:
    """SIGKILL what :func:`processes_in` finds (the process groups too); what was found."""
    found = processes_in(folder)
    for pid in found:
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while processes_in(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found
