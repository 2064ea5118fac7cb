"""DataSynchronizer harnesses against the real stack.

``lustre-hsm``: ``LustreHsmSynchronizer`` over ``SlurmGateway`` (SSH to the test stack, the
elevated job as obpadmin) and ``S3ObjectStore`` (the session's moto server). There is no Lustre
here: the stack's ``lfs`` test fixture (``scripts/stack/fixtures/lfs``) emulates the HSM over
the folder standing for the mount; the harness points its DRA "project" at a moto bucket by
rewriting the fixture's configuration (``/etc/obp-stack/lfs-hsm.conf``), and steers single
files with the fixture's switches (``never``: the archive never arrives; ``slow``).

The simulation jobs run for real (as obpsim, through ``SlurmClusterHarness``), in run folders
under the emulated DRA root.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obp_workflow.adapters.aws.s3 import S3ObjectStore
from obp_workflow.adapters.ssh.hsm import HsmSettings, LustreHsmSynchronizer
from obp_workflow.core.cluster import LustreStorage
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import SyncLimits, SyncPlan, SyncRefused, choose_sync
from obp_workflow.ports.cluster import ClusterGateway
from obp_workflow.ports.sync import DataSynchronizer
from tests.contract.harness_aws import aws_client, moto
from tests.contract.harness_slurm import SlurmClusterHarness, _accounted_end
from tests.stack import slurm, stack, tagged_ids, wait_until

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from tests.contract.harness import SyncHarness

LFS_CONF = Path(os.environ.get("OBP_LFS_HSM_CONF", "/etc/obp-stack/lfs-hsm.conf"))
BUCKET = "obp-nexus-data"
PREFIX = "nexus/org/project"
DRA_PATH = "/project"


def lfs_conf() -> dict[str, Any]:
    if not LFS_CONF.exists():
        raise RuntimeError(
            f"{LFS_CONF} is missing: the stack's lfs fixture is not installed (make stack-up)"
        )
    return dict(json.loads(LFS_CONF.read_text()))


def _write_conf(conf: dict[str, Any]) -> None:
    partial = LFS_CONF.with_name(LFS_CONF.name + f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(conf, indent=2))
    partial.chmod(0o644)
    partial.replace(LFS_CONF)


class LustreHsmSyncHarness:
    #: The elevated job polls the HSM state this often, and gives up after this long.
    POLL_SECONDS = 0.5
    WAIT_SECONDS = 60

    def __init__(self) -> None:
        conf = lfs_conf()
        server = moto()
        self.s3: S3Client = aws_client("s3")
        self.s3.create_bucket(Bucket=BUCKET)  # idempotent in us-east-1 (and after a reset)
        conf["associations"] = [
            {"path": DRA_PATH, "bucket": BUCKET, "prefix": PREFIX, "endpoint": server.endpoint}
        ]
        _write_conf(conf)
        self.state_dir = Path(conf["state_dir"])
        mount = str(conf["mount_path"])
        self.slurm = SlurmClusterHarness()
        storage = LustreStorage("fs-0123456789abcdef0", mount, DRA_PATH, BUCKET, PREFIX)
        self.cluster = dataclasses.replace(
            self.slurm.cluster, storage=storage, runs_root=f"{storage.dra_root}/runs"
        )
        self.slurm.cluster = self.cluster
        self.gateway: ClusterGateway = self.slurm.gateway
        self.settings = HsmSettings(
            jobs_root=f"{stack().home('admin')}/obp-sync",
            wait_seconds=self.WAIT_SECONDS,
            poll_seconds=self.POLL_SECONDS,
        )
        self.sync: DataSynchronizer = LustreHsmSynchronizer(
            self.gateway, S3ObjectStore(aws_client("s3")), self.settings
        )
        self._switches: list[Path] = []
        self._tags: list[str] = []

    # ---------------------------------------------------------------- SyncHarness

    def run_simulation(self, outputs: Sequence[str]) -> tuple[RunHeader, SyncPlan]:
        job = self.slurm.job(outputs=outputs)
        job_id = self.gateway.submit(self.cluster, job.spec)
        self.slurm.let_finish(job_id)
        found = {f.path: f.size for f in self.gateway.list_outputs(self.cluster, job.folder)}
        plan = choose_sync(self.cluster.storage, job.folder, list(outputs), found, SyncLimits())
        assert not isinstance(plan, SyncRefused), plan
        self._tags.append(job.header.tag)
        return job.header, plan

    def let_sync_job_finish(self, job_id: str) -> None:
        slurm("scontrol", "release", job_id, check=False)
        wait_until(lambda: _accounted_end(job_id), 120, f"sync job {job_id} to end")

    def block(self, header: RunHeader, plan: SyncPlan, relative_path: str) -> None:
        (file,) = [f for f in plan.files if f.relative_path == relative_path]
        self.switch("never", file.cluster_path, "fail")

    def sync_jobs(self, header: RunHeader) -> int:
        return sum(len(tagged_ids(f"{header.tag}-sync-{n}")) for n in range(1, 4))

    def stored(self, header: RunHeader) -> int:
        storage = self.cluster.storage
        assert isinstance(storage, LustreStorage)
        key = storage.s3_key(self.cluster.run_folder(header.run_id) + "/x")
        assert key is not None
        prefix = key[: -len("x")]
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sum(len(page.get("Contents", [])) for page in pages)

    def transfers(self) -> int:
        log = self.state_dir / "archive.log"
        return len(log.read_text().splitlines()) if log.exists() else 0

    def close(self) -> None:
        for tag in self._tags:
            for n in range(1, 4):
                slurm("scancel", f"--name={tag}-sync-{n}", check=False)
        for path in self._switches:
            path.unlink(missing_ok=True)
        self.slurm.close()

    # ---------------------------------------------------------------- more controls

    def switch(self, kind: str, cluster_path: str, value: str) -> None:
        """Set one of the lfs fixture's per-file switches (``never``: fail|lost; ``slow``)."""
        folder = self.state_dir / kind
        folder.mkdir(mode=0o755, exist_ok=True)
        path = folder / hashlib.sha256(cluster_path.encode()).hexdigest()
        path.write_text(value)
        path.chmod(0o644)
        self._switches.append(path)

    def clear_switch(self, kind: str, cluster_path: str) -> None:
        path = self.state_dir / kind / hashlib.sha256(cluster_path.encode()).hexdigest()
        path.unlink(missing_ok=True)

    def object_bytes(self, key: str) -> bytes | None:
        try:
            return self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None

    def job_log(self, header: RunHeader, attempt: int) -> str:
        path = Path(self.settings.jobs_root) / header.run_id / f"sync-{attempt}.log"
        return path.read_text() if path.exists() else ""


if TYPE_CHECKING:  # mypy proves each harness implements its port's harness protocol
    _harnesses: list[type[SyncHarness]] = [LustreHsmSyncHarness]
