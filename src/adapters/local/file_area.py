"""The local graph's files on disk: ``{root}/{virtual_lab_id}/{project_id}/{run_id}/{path}``.

A run's output path is confined to its run's folder: an empty, ``.`` or ``..`` segment, a
leading ``/`` or a NUL is refused (``InvalidRequest``), and so is a run id that is not one
plain name. Content arrives in two steps: ``receive`` streams it into a temporary file under
``{root}/.partial`` (same file system, never inside a run's folder), counting its bytes and
digesting it (SHA-256) as it goes; ``publish`` renames that file over its place in one step
(``rename(2)``) and syncs the folder. A reader therefore sees the previous content or the new
one, never a part; a stream that fails midway leaves nothing (its temporary file is removed;
one left by a process that died is swept a day later, ``sweep``).
Folders are made 0700 and files 0600: the home is its owner's alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from obp_workflow.core.errors import FieldError, InvalidRequest, ServiceUnavailable, SyncIncomplete
from obp_workflow.core.identity import ProjectRef

FOLDER_MODE = 0o700
FILE_MODE = 0o600
CHUNK = 1024 * 1024
#: One plain name (a run id): no separator, not ``.`` or ``..``.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")
PARTIAL = ".partial"


def path_parts(relative_path: str) -> list[str]:
    """The segments of an output's path; InvalidRequest when it would leave its run's folder."""
    parts = relative_path.split("/")
    if (
        not relative_path
        or relative_path.startswith("/")
        or "\x00" in relative_path
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise InvalidRequest([FieldError("relative_path", "must stay inside the run's folder")])
    return parts


@dataclass(frozen=True)
class Received:
    """Content written to a temporary file: ``size`` bytes with SHA-256 ``sha256`` (hex)."""

    path: Path
    size: int
    sha256: str


class FileArea:
    def __init__(self, root: Path) -> None:
        self.root = root

    def relative(self, project: ProjectRef, run_id: str, relative_path: str) -> str:
        """The file's place under the root (``/``-separated)."""
        if not NAME.fullmatch(run_id):
            raise InvalidRequest([FieldError("run_id", "must be one plain name")])
        parts = [project.virtual_lab_id, project.project_id, run_id, *path_parts(relative_path)]
        return "/".join(parts)

    def path(self, relative: str) -> Path:
        return self.root.joinpath(*relative.split("/"))

    def size_of(self, relative: str) -> int | None:
        """The size of the regular file at ``relative``; None when there is none."""
        try:
            info = self.path(relative).lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise ServiceUnavailable(
                f"the graph's file {relative} could not be read: {exc}"
            ) from None
        return info.st_size if _is_file(info.st_mode) else None

    def sweep(self, older_than_seconds: float = 86_400.0) -> int:
        """Remove temporary files left by writers that died long ago; how many were removed."""
        removed = 0
        limit = time.time() - older_than_seconds
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / PARTIAL) as found:
            for entry in found:
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < limit:
                        os.unlink(entry.path)
                        removed += 1
        return removed

    def receive(
        self, stream: IO[bytes] | Iterable[bytes], size: int, relative_path: str
    ) -> Received:
        """Write the stream to a temporary file, checking that it holds exactly ``size`` bytes
        (``SyncIncomplete`` naming ``relative_path`` otherwise). Whatever the stream raises is
        raised, and the temporary file is gone."""
        folder = _folder(self.root / PARTIAL)
        temporary = folder / f"{secrets.token_hex(12)}.part"
        done = False
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
            digest, count = hashlib.sha256(), 0
            try:
                for chunk in _chunks(stream):
                    count += len(chunk)
                    if count > size:
                        break
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                if count == size:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if count != size:
                held = "more than" if count > size else str(count)
                raise SyncIncomplete(
                    [relative_path],
                    f"{relative_path}: the stream holds {held} bytes, not the {size} announced",
                )
            done = True
            return Received(temporary, count, digest.hexdigest())
        except OSError as exc:
            raise ServiceUnavailable(
                f"{relative_path} could not be written to the graph's files: {exc.strerror or exc}"
            ) from None
        finally:
            if not done:
                discard(temporary)

    def publish(self, received: Received, relative: str) -> Path:
        """Put the received content at ``relative`` in one step (replacing what was there)."""
        target = self.path(relative)
        try:
            folder = _folder(target.parent)
            if not Path(os.path.realpath(folder)).is_relative_to(os.path.realpath(self.root)):
                raise InvalidRequest([FieldError("relative_path", "must stay inside its folder")])
            os.replace(received.path, target)
            _sync_folder(folder)
        except OSError as exc:
            raise ServiceUnavailable(
                f"the graph's file {relative} could not be written: {exc.strerror or exc}"
            ) from None
        finally:
            discard(received.path)  # nothing left there once renamed
        return target


def discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _chunks(stream: IO[bytes] | Iterable[bytes]) -> Iterator[bytes]:
    read = getattr(stream, "read", None)
    if callable(read):
        while chunk := read(CHUNK):
            yield chunk
        return
    for chunk in stream:
        if chunk:
            yield bytes(chunk)


def _folder(path: Path) -> Path:
    path.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    return path


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_file(mode: int) -> bool:
    return stat.S_ISREG(mode)
