"""The DataSync policy: how a run's outputs leave the cluster, chosen by pure rules.

- Outputs under the Lustre data repository association are archived by the Lustre HSM to the
  association's S3 bucket (by an elevated job), confirmed there, and linked in the knowledge graph.
- Anything else is streamed from the cluster straight into the knowledge graph, within limits.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from obp_workflow.core.cluster import LustreStorage, Storage

MAX_S3_KEY_BYTES = 1024


@dataclass(frozen=True)
class SyncLimits:
    direct_upload_max_file_bytes: int = 5 * 1024**3
    direct_upload_max_total_bytes: int = 50 * 1024**3
    max_attempts: int = 3


@dataclass(frozen=True)
class SyncFile:
    """One output: where it is on the cluster, its name in the run, its size."""

    relative_path: str
    cluster_path: str
    size: int
    s3_key: str | None = None


@dataclass(frozen=True)
class LustreHsmExport:
    bucket: str
    files: tuple[SyncFile, ...]
    kind: str = "lustre-hsm"


@dataclass(frozen=True)
class NexusDirectUpload:
    files: tuple[SyncFile, ...]
    kind: str = "nexus-upload"


@dataclass(frozen=True)
class SyncRefused:
    reason: str
    offending: tuple[str, ...] = ()
    kind: str = "refused"


SyncPlan = LustreHsmExport | NexusDirectUpload


def choose_sync(
    storage: Storage,
    run_folder: str,
    expected: Sequence[str],
    found: Mapping[str, int],
    limits: SyncLimits,
) -> SyncPlan | SyncRefused:
    """Choose how to synchronise ``expected`` outputs (relative to ``run_folder``).

    ``found`` maps each output present on the cluster to its size in bytes.
    """
    missing = [p for p in expected if p not in found]
    if missing:
        return SyncRefused("outputs missing on the cluster", tuple(missing))
    files = [(rel, posixpath.join(run_folder, rel), found[rel]) for rel in expected]
    if isinstance(storage, LustreStorage) and all(
        storage.s3_key(path) is not None for _, path, _ in files
    ):
        keys = {path: storage.s3_key(path) or "" for _, path, _ in files}
        too_long = [rel for rel, path, _ in files if len(keys[path].encode()) > MAX_S3_KEY_BYTES]
        if too_long:
            return SyncRefused("S3 keys longer than 1024 bytes are not exported", tuple(too_long))
        return LustreHsmExport(
            storage.bucket,
            tuple(SyncFile(rel, path, size, keys[path]) for rel, path, size in files),
        )
    too_big = [rel for rel, _, size in files if size > limits.direct_upload_max_file_bytes]
    if too_big:
        return SyncRefused(
            f"outputs above the direct-upload limit of {limits.direct_upload_max_file_bytes} "
            "bytes on a cluster without Lustre",
            tuple(too_big),
        )
    total = sum(size for _, _, size in files)
    if total > limits.direct_upload_max_total_bytes:
        return SyncRefused(
            f"outputs total {total} bytes, above the direct-upload limit of "
            f"{limits.direct_upload_max_total_bytes} bytes on a cluster without Lustre",
            tuple(rel for rel, _, _ in files),
        )
    return NexusDirectUpload(tuple(SyncFile(rel, path, size) for rel, path, size in files))


@dataclass(frozen=True)
class SyncedFile:
    """An output at its destination: an S3 object or a knowledge-graph file."""

    relative_path: str
    size: int
    location: str  # s3://bucket/key or the knowledge graph's file id
    digest: str | None = None  # "sha256:<hex>" when known


@dataclass(frozen=True)
class SyncOutcome:
    kind: str  # "lustre-hsm" or "nexus-upload"
    files: tuple[SyncedFile, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "files": [
                    {
                        "path": f.relative_path,
                        "size": f.size,
                        "location": f.location,
                        "digest": f.digest,
                    }
                    for f in self.files
                ],
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> SyncOutcome:
        data = json.loads(text)
        return cls(
            str(data["kind"]),
            tuple(
                SyncedFile(str(f["path"]), int(f["size"]), str(f["location"]), f.get("digest"))
                for f in data["files"]
            ),
        )
