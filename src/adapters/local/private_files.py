"""Private files under OBP_HOME: folders only the owner may enter, files only the owner may read,
created whole and never overwritten.

A file is written under a temporary name (``O_EXCL``, mode 0600), flushed, then published with
``link(2)``, which fails when the name is taken: of writers racing for one name exactly one wins,
and a reader never sees a partly written file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_folder(path: Path) -> Path:
    """``path`` as a folder of mode 0700 (created with its parents when missing)."""
    path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{path} is not a folder")
    if stat.S_IMODE(info.st_mode) != FOLDER_MODE and info.st_uid == os.getuid():
        os.chmod(path, FOLDER_MODE)  # mkdir's mode is narrowed by the umask, never widened
    return path


def create_exclusive(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` (mode 0600) unless the name is taken; True when written."""
    folder = path.parent
    temporary = folder / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def read_private(path: Path, *, follow_links: bool = False) -> bytes:
    """The content of a regular file that only its owner may read (not a symbolic link unless
    ``follow_links``); ValueError (naming the path) when others may read it,
    FileNotFoundError when it is missing."""
    try:
        fd = os.open(path, os.O_RDONLY | (0 if follow_links else os.O_NOFOLLOW))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link: not followed") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_mode & 0o077:
            raise ValueError(
                f"{path} may be read by others (mode {stat.S_IMODE(info.st_mode):04o}): "
                "make it private with chmod 600"
            )
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
