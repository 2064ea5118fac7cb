"""DataSynchronizer harnesses against the real stack.

``lustre-hsm``: ``LustreHsmSynchronizer`` over ``SlurmClusterGateway`` (SSH to the test stack, the
elevated job as obpadmin) and ``S3ObjectStore`` (the session's moto server). There is no Lustre
here: the stack's ``lfs`` test fixture (``scripts/stack/fixtures/lfs``) emulates the HSM over
the folder standing for the mount; the harness points its DRA "project" at a moto bucket by
rewriting the fixture's configuration (``/etc/obp-stack/lfs-hsm.conf``), and steers single
files with the fixture's switches (``never``: the archive never arrives; ``slow``).

The simulation jobs run for real (as obpsim, through ``SlurmClusterGatewayHarness``), in run folders
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
from urllib.parse import unquote

from obp_workflow.adapters.aws.s3 import S3ObjectStore
from obp_workflow.adapters.nexus.graph import NexusKnowledgeGraph
from obp_workflow.adapters.nexus.upload import NexusUploadSynchronizer
from obp_workflow.adapters.sync.lustre_hsm import HsmSettings, LustreHsmSynchronizer
from obp_workflow.core.cluster import LustreStorage
from obp_workflow.core.run import RunHeader
from obp_workflow.core.sync import SyncLimits, SyncPlan, SyncRefused, choose_sync
from obp_workflow.ports.cluster import ClusterGateway
from obp_workflow.ports.sync import DataSynchronizer
from tests.contract.harness import PROJECT_A, PROJECT_B
from tests.contract.harness_aws import aws_client, moto
from tests.contract.harness_nexus import PUBLIC_BASE, nexus_settings
from tests.contract.harness_slurm import SlurmClusterGatewayHarness, _accounted_end
from tests.nexus_server import TOKEN, NexusServer
from tests.stack import slurm, stack, tagged_ids, wait_until

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

    from tests.contract.harness import DataSynchronizerHarness

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


class LustreHsmSynchronizerHarness:
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
        self.slurm = SlurmClusterGatewayHarness()
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

    # ---------------------------------------------------------------- DataSynchronizerHarness

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


class NexusUploadSynchronizerHarness:
    """``nexus-upload``: ``NexusUploadSynchronizer`` over ``SlurmClusterGateway`` (the test stack,
    whose storage is a plain shared file system) and ``NexusKnowledgeGraph`` (real HTTP to the Nexus
    Delta test server, ``tests/nexus_server.py``, one per harness).

    ``block`` makes the server fail (503) every upload of that output's file, so the upload
    never lands; ``transfers`` counts the uploads Nexus accepted (file PUTs answered 2xx).
    """

    def __init__(self) -> None:
        self.server = NexusServer(base_uri=PUBLIC_BASE)
        self.server.start()
        self.settings = nexus_settings(self.server)
        for project in (PROJECT_A, PROJECT_B):
            self.server.create_project(*self.settings.project_for(project))
        self.nexus = NexusKnowledgeGraph(self.settings, lambda: TOKEN)
        self.slurm = SlurmClusterGatewayHarness()
        self.cluster = self.slurm.cluster  # SharedStorage: outputs leave by direct upload
        self.gateway: ClusterGateway = self.slurm.gateway
        self.sync: DataSynchronizer = NexusUploadSynchronizer(self.gateway, self.nexus)

    # ---------------------------------------------------------------- DataSynchronizerHarness

    def run_simulation(self, outputs: Sequence[str]) -> tuple[RunHeader, SyncPlan]:
        job = self.slurm.job(outputs=outputs)
        job_id = self.gateway.submit(self.cluster, job.spec)
        self.slurm.let_finish(job_id)
        found = {f.path: f.size for f in self.gateway.list_outputs(self.cluster, job.folder)}
        plan = choose_sync(self.cluster.storage, job.folder, list(outputs), found, SyncLimits())
        assert not isinstance(plan, SyncRefused), plan
        return job.header, plan

    def let_sync_job_finish(self, job_id: str) -> None:
        raise AssertionError(f"a direct upload runs no sync job (asked to wait for {job_id})")

    def block(self, header: RunHeader, plan: SyncPlan, relative_path: str) -> None:
        self.fail_uploads(header, relative_path)

    def sync_jobs(self, header: RunHeader) -> int:
        return sum(len(tagged_ids(f"{header.tag}-sync-{n}")) for n in range(1, 4))

    def stored(self, header: RunHeader) -> int:
        prefix = self.nexus.activity_id(header.project, header.run_id) + "/outputs/"
        return sum(
            1
            for ident in self.server.files()
            if ident.startswith(prefix) and not self.server.deprecated(ident)
        )

    def transfers(self) -> int:
        return sum(
            1
            for r in self.server.requests
            if r.method == "PUT" and "/files/" in r.path and r.status in (200, 201)
        )

    def close(self) -> None:
        self.server.clear_faults()
        self.nexus.close()
        self.server.stop()
        self.slurm.close()

    # ---------------------------------------------------------------- more controls

    def file_id(self, header: RunHeader, relative_path: str) -> str:
        return self.nexus.file_id(header.project, header.run_id, relative_path)

    def fail_uploads(self, header: RunHeader, relative_path: str, times: int = 1000) -> None:
        """The server answers 503 to the next ``times`` uploads of this output's file."""
        ident = self.file_id(header, relative_path)

        def is_upload(method: str, path: str) -> bool:
            return (
                method == "PUT" and "/files/" in path and unquote(path.rsplit("/", 1)[-1]) == ident
            )

        self.server.fail_next(times, status=503, match=is_upload)

    def file_content(self, header: RunHeader, relative_path: str) -> bytes | None:
        return self.server.file_content(self.file_id(header, relative_path))


if TYPE_CHECKING:  # mypy proves each harness implements its port's harness protocol
    _harnesses: list[type[DataSynchronizerHarness]] = [
        LustreHsmSynchronizerHarness,
        NexusUploadSynchronizerHarness,
    ]
