"""The files of a run folder on this machine, never reached through a symbolic link that leaves
it: the job's files written in (folders 0750, files 0640, each written then renamed), and its
log and outputs read out."""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import re
import secrets
import stat
from collections.abc import Iterator, Mapping

from obp_workflow.core.errors import FieldError, InvalidRequest, NotFound
from obp_workflow.core.jobspec import confined
from obp_workflow.core.text import utf8_tail
from obp_workflow.ports.cluster import OutputFile

FILE_NAME = re.compile(r"^[A-Za-z0-9_.-][A-Za-z0-9_.@+=,-]*$")
CHUNK = 1 << 20
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def open_folder(runs_root: str, folder: str, *, create: bool) -> int | None:
    """A descriptor of ``folder`` (below ``runs_root``), reached without following a symbolic
    link below the root, the missing folders created when ``create``; None when it is missing.
    InvalidRequest when a part of it is a symbolic link or no folder."""
    parts = [p for p in folder[len(runs_root) :].split("/") if p]
    fd = os.open(runs_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o750, dir_fd=fd)
            try:
                inner = os.open(part, _DIRECTORY, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise InvalidRequest(
                        [FieldError("run_folder", "is a symbolic link or not a folder")]
                    ) from None
                raise
            os.close(fd)
            fd = inner
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def write_files(folder_fd: int, files: Mapping[str, str]) -> None:
    """Each file written whole under a temporary name, then renamed into place."""
    for name, content in files.items():
        temp = f".{name}.{secrets.token_hex(4)}.partial"
        fd = os.open(
            temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640, dir_fd=folder_fd
        )
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content.encode())
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, name, src_dir_fd=folder_fd, dst_dir_fd=folder_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=folder_fd)
            raise


def tail(folder_fd: int, name: str, max_bytes: int) -> str:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=folder_fd)
    except FileNotFoundError:
        return ""
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - max_bytes)
        data = os.pread(fd, size - start, start)
    finally:
        os.close(fd)
    return utf8_tail(data, max_bytes)


def list_files(folder_fd: int) -> list[OutputFile]:
    """Every regular file below the folder (symbolic links are not followed nor listed)."""
    found = []
    for top, _dirs, names, top_fd in os.fwalk(".", dir_fd=folder_fd, follow_symlinks=False):
        for name in names:
            try:
                info = os.stat(name, dir_fd=top_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                found.append(
                    OutputFile(posixpath.normpath(posixpath.join(top, name)), info.st_size)
                )
    return sorted(found, key=lambda f: f.path)


def open_output(run_folder: str, path: str) -> int:
    """A descriptor of the regular file ``path`` of the run folder. InvalidRequest when the path
    leaves the folder (``..``, absolute, or through a symbolic link), NotFound when there is no
    such regular file."""
    full = confined(run_folder, path)
    real_folder = os.path.realpath(run_folder)
    if not _inside(os.path.realpath(full), real_folder):
        raise InvalidRequest([FieldError("path", "leaves the run folder by a symbolic link")])
    try:
        info = os.lstat(full)
        if not stat.S_ISREG(info.st_mode):
            raise NotFound(f"output {path} is not a regular file")
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"output {path} not found in the run folder") from None
    opened = os.fstat(fd)
    # What was opened is what was checked, and still inside (no folder swapped in between).
    where = f"/proc/self/fd/{fd}"
    moved = os.path.exists(where) and not _inside(os.readlink(where), real_folder)
    if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino) or moved:
        os.close(fd)
        raise NotFound(f"output {path} changed while it was opened")
    return fd


def stream(fd: int) -> Iterator[bytes]:
    try:
        while chunk := os.read(fd, CHUNK):
            yield chunk
    finally:
        os.close(fd)


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")
