"""An ObjectStore over a folder: each bucket a folder, each object a file (``$OBP_HOME/objects``).

``{root}/{bucket}/{key}``: a key's ``/`` are folders. Keys are confined to their bucket's folder:
an empty, ``.`` or ``..`` segment, a leading ``/`` or a NUL is refused (``InvalidRequest``), and
only regular files are objects (a symbolic link, or a file reached through one, is not). A key
ending with ``/`` names no object (S3's folder markers do not exist here).

S3 lets a key also be the start of other keys (``runs/r-1`` beside ``runs/r-1/out.h5``); a
folder cannot be a file too. Such an object is the file ``.obp-object`` inside the folder of
its key (``runs/r-1/.obp-object``): a key is the file at its path, or, when that path is a
folder, the ``.obp-object`` in it. Hence no key may have a segment ``.obp-object``.

- ``etag``: the MD5 of the content in hex, as S3 gives for an object uploaded in one part. It is
  computed when asked and kept in memory against the file's identity (device, inode, size,
  modification time), so asking again about an unchanged file reads nothing (a file modified
  in the last two seconds is digested each time: file times are too coarse to tell two writes
  within one tick apart).
- ``last_modified``: the file's modification time (UTC).
- ``list``: every object whose key starts with the prefix, in key order (S3's order: by UTF-8
  bytes, which is code point order), produced lazily by a depth-first walk that enters only the
  folders the prefix can reach. Each folder's entries are ordered by the key they start (a
  folder ``a`` by ``a/``), so a depth-first walk meets the keys in order.

A bucket whose folder is missing holds nothing for ``head``; listing it is ``ServiceUnavailable``
naming the bucket, as S3 answers NoSuchBucket. Any other error of the file system is
``ServiceUnavailable`` naming the object.

Writers should publish objects whole (write a temporary file outside the bucket, then rename
it in): what is in the folder is what the store shows.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from obp_workflow.core.errors import FieldError, InvalidRequest, ServiceUnavailable
from obp_workflow.ports.objects import ObjectInfo, ObjectStore

#: S3's rules for a bucket name (which also make it one safe folder name).
BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CHUNK = 1024 * 1024
#: The file holding the object whose key is also a folder (of the keys that extend it).
MARKER = ".obp-object"
_ETAGS_KEPT = 100_000
_SETTLED_SECONDS = 2.0

_Stamp = tuple[int, int, int, int]  # device, inode, size, modification time (ns)


def _stamp(info: os.stat_result) -> _Stamp:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


class FileObjectStore(ObjectStore):
    """Buckets as the folders of ``root`` (``$OBP_HOME/objects``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._etags: dict[str, tuple[_Stamp, str]] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- the port

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        found = self.locate(bucket, key)
        if found is None:
            return None
        path, info = found
        return self._info(key, path, info)

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        folder = self.bucket_folder(bucket)
        if "\x00" in prefix:
            raise InvalidRequest([FieldError("prefix", "must not contain NUL")])
        try:
            if not folder.is_dir():
                raise ServiceUnavailable(
                    f"bucket {bucket} does not exist (no folder {folder}): check the storage "
                    "configuration"
                )
        except OSError as exc:
            raise _unavailable(f"list {bucket}/{prefix}", exc) from None
        yield from self._walk(folder, "", prefix)

    # ---------------------------------------------------------------- for the local family

    def bucket_folder(self, bucket: str) -> Path:
        if not BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
            raise InvalidRequest([FieldError("bucket", "must be an S3 bucket name")])
        return self.root / bucket

    def path_of(self, bucket: str, key: str) -> Path | None:
        """Where the object at ``key`` is, or would be, when its path is no folder (else it is
        the ``MARKER`` in that folder); None for a key ending with ``/``."""
        folder = self.bucket_folder(bucket)
        if key == "" or key.endswith("/"):
            return None
        parts = key.split("/")
        if key.startswith("/") or "\x00" in key or any(p in ("", ".", "..", MARKER) for p in parts):
            raise InvalidRequest([FieldError("key", "must stay inside its bucket")])
        return folder.joinpath(*parts)

    def locate(self, bucket: str, key: str) -> tuple[Path, os.stat_result] | None:
        """The object's file and its status, or None when there is no such object."""
        path = self.path_of(bucket, key)
        if path is None:
            return None
        inside = os.path.join(os.path.realpath(self.root / bucket), *key.split("/"))
        try:
            info = path.lstat()
            if stat.S_ISDIR(info.st_mode):
                path, inside = path / MARKER, os.path.join(inside, MARKER)
                info = path.lstat()
            # Neither the file nor a folder on the way may be a symbolic link.
            if not stat.S_ISREG(info.st_mode) or os.path.realpath(path) != inside:
                return None
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise _unavailable(f"head {bucket}/{key}", exc) from None
        return path, info

    # ---------------------------------------------------------------- plumbing

    def _walk(self, folder: Path, start: str, prefix: str) -> Iterator[ObjectInfo]:
        """The objects under ``folder`` (whose keys start with ``start``) in key order."""
        entries: list[tuple[str, bool, str]] = []  # key (a folder's ends with /), folder?, path
        try:
            with os.scandir(folder) as found:
                for entry in found:
                    key = start + entry.name
                    if entry.is_dir(follow_symlinks=False):
                        entries.append((key + "/", True, entry.path))
                        if key.startswith(prefix):  # the folder's own object, if it has one
                            entries.append((key, False, os.path.join(entry.path, MARKER)))
                    elif entry.is_file(follow_symlinks=False) and entry.name != MARKER:
                        entries.append((key, False, entry.path))
        except FileNotFoundError:
            return  # removed while walking: nothing there any more
        except OSError as exc:
            raise _unavailable(f"list {folder}", exc) from None
        entries.sort(key=lambda e: e[0])
        for key, is_folder, path in entries:
            if is_folder:
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(path), key, prefix)
            elif key.startswith(prefix):
                try:
                    info = os.lstat(path)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError as exc:
                    raise _unavailable(f"list {path}", exc) from None
                if stat.S_ISREG(info.st_mode):
                    yield self._info(key, Path(path), info)

    def _info(self, key: str, path: Path, info: os.stat_result) -> ObjectInfo:
        modified = datetime.fromtimestamp(info.st_mtime_ns / 1e9, UTC)
        return ObjectInfo(key, info.st_size, self._etag(path, info), modified)

    def _etag(self, path: Path, info: os.stat_result) -> str:
        name, stamp = str(path), _stamp(info)
        with self._lock:
            kept = self._etags.get(name)
        if kept is not None and kept[0] == stamp:
            return kept[1]
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with path.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
                after = _stamp(os.fstat(f.fileno()))
        except OSError as exc:
            raise _unavailable(f"read {path}", exc) from None
        etag = digest.hexdigest()
        # Kept only for a file unchanged while read and not modified in the last seconds: file
        # times are coarse, so a rewrite within the same tick would keep its stamp ("racy git").
        if after == stamp and time.time() - info.st_mtime > _SETTLED_SECONDS:
            with self._lock:
                if len(self._etags) >= _ETAGS_KEPT:
                    self._etags.clear()
                self._etags[name] = (stamp, etag)
        return etag


def _unavailable(what: str, exc: OSError) -> ServiceUnavailable:
    return ServiceUnavailable(f"the object folder could not {what}: {exc.strerror or exc}")
