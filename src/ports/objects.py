from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    """What an object store says about one stored object (never its content)."""

    key: str
    size: int
    etag: str  # without the surrounding quotes S3 puts around it
    last_modified: datetime | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """Read-only look at a bucket, to confirm that a sync's objects arrived (S3 behind a DRA).

    Errors reaching the store are ServiceUnavailable; a missing object is not an error.
    """

    @abstractmethod
    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        """The object at exactly ``key``, or None when there is none."""

    @abstractmethod
    def list(self, bucket: str, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a plain string prefix, as in S3:
        end it with ``/`` to mean a folder), in key order, fetched page by page as the
        iterator is consumed."""
