"""An in-memory ObjectStore: S3 objects by (bucket, key), with S3's etags."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

from obp_workflow.ports.objects import ObjectInfo, ObjectStore
from obp_workflow.ports.system import Clock


class FakeObjectStore(ObjectStore):
    """S3 objects by (bucket, key). Keys in ``blocked`` never appear (a stuck export).

    Also the fake ObjectStore: ``head`` and ``list`` see what ``put`` stored, with S3's etag
    of a single-part upload (the MD5 of the content) and the time of the put (``clock``, or
    the system's time when none is given).
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.blocked: set[str] = set()
        self._modified: dict[tuple[str, str], datetime] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def put(self, bucket: str, key: str, data: bytes) -> None:
        now = self._clock.now() if self._clock is not None else datetime.now(UTC)
        with self._lock:
            if key not in self.blocked:
                self.objects[(bucket, key)] = data
                self._modified[(bucket, key)] = now

    def sizes(self, bucket: str) -> Mapping[str, int]:
        with self._lock:
            return {k: len(v) for (b, k), v in self.objects.items() if b == bucket}

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        with self._lock:
            data = self.objects.get((bucket, key))
            if data is None:
                return None
            return self._info(bucket, key, data)

    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        with self._lock:  # a snapshot: puts during the iteration are not seen
            found = sorted(
                (
                    self._info(b, k, v)
                    for (b, k), v in self.objects.items()
                    if b == bucket and k.startswith(prefix)
                ),
                key=lambda info: info.key,
            )
        yield from found

    def _info(self, bucket: str, key: str, data: bytes) -> ObjectInfo:
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        return ObjectInfo(key, len(data), etag, self._modified.get((bucket, key)))
