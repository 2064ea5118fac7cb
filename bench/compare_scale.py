"""Many runs at once (bench/compare.py): 1,000 through the API until queued in Slurm, and
10,000 active runs across ten clusters watched by the monitor.

The ten clusters are ten SSH endpoints over the one Slurm of the test stack: ten
``ClusterHandle``s with distinct names (``obptest-ep0`` .. ``obptest-ep9``), all pointing at
127.0.0.1:2222 as the stack's user. The pool keeps one connection per endpoint (its key holds
the cluster's name), so the service holds ten SSH connections and asks ten schedulers, as it
would for ten projects on ten clusters; each project has its own cluster and 1,000 runs whose
jobs are held (``sbatch --hold``).
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.application import application  # noqa: E402
from tests.contract.harness_slurm import stack_cluster  # noqa: E402
from tests.stack import slurm, stack  # noqa: E402

from bench.compare_ways import Sessions, sdiag_rpcs  # noqa: E402
from bench.worker import DEFAULT_POLL, Service, percentile  # noqa: E402
from obp_workflow.adapters.fake.cluster_provisioner import FakeClusterProvisioner  # noqa: E402
from obp_workflow.adapters.fake.event_publisher import FakeEventPublisher  # noqa: E402
from obp_workflow.adapters.fake.id_generator import FakeIdGenerator  # noqa: E402
from obp_workflow.adapters.fake.instance_orchestrator import FakeInstanceOrchestrator  # noqa: E402
from obp_workflow.adapters.fake.run_repository import FakeRunRepository  # noqa: E402
from obp_workflow.adapters.ssh.connection import PoolSettings, SshPool  # noqa: E402
from obp_workflow.adapters.ssh.slurm import SlurmClusterGateway  # noqa: E402
from obp_workflow.adapters.system.clock import SystemClock  # noqa: E402
from obp_workflow.core.cluster import ClusterHandle  # noqa: E402
from obp_workflow.core.identity import ProjectRef  # noqa: E402
from obp_workflow.core.request import SimulationRequest  # noqa: E402
from obp_workflow.core.run import Requester, RunHeader, RunState, SimulationRun  # noqa: E402

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
HELD_NAME = "obp-bench-cmp"
POOL = PoolSettings(connects_per_minute=600, queries_per_minute=60_000)


def max_job_count() -> int:
    for line in slurm("scontrol", "show", "config").splitlines():
        if line.startswith("MaxJobCount"):
            return int(line.split("=", 1)[1])
    raise RuntimeError("scontrol show config has no MaxJobCount")


# ============================================================== 1,000 runs through the API


def intake(count: int) -> dict[str, float]:
    """POST ``count`` runs back to back while the partition is down, until every run is QUEUED
    (its job PENDING in Slurm); then the jobs are cancelled and the service stopped."""
    partition = stack().partition
    service = Service(DEFAULT_POLL)
    ids: list[str] = []
    try:
        slurm("scontrol", "update", f"PartitionName={partition}", "State=DOWN")
        started = time.perf_counter()
        api = []
        for _ in range(count):
            run_id, _, took = service.post(["true"])
            ids.append(run_id)
            api.append(took)
        service.wait(ids, lambda r: r.state is RunState.QUEUED, 600)
        result = {
            "count": count,
            "intake": time.perf_counter() - started,
            "api_p50": statistics.median(api),
            "api_p99": percentile(api, 99),
        }
        jobs = [str(service.run(r).job_id) for r in ids]
        for at in range(0, len(jobs), 500):
            slurm("scancel", *jobs[at : at + 500], check=False)
        return result
    finally:
        slurm("scontrol", "update", f"PartitionName={partition}", "State=UP")
        service.close()


# ============================================================== 10,000 runs, ten clusters


def submit_held(count: int, name: str = HELD_NAME) -> list[str]:
    """``count`` held jobs named ``name`` of the stack's user, submitted on the cluster in one
    batch."""
    user = stack().user("sim")
    script = (
        f"cd ~ && for i in $(seq {count}); do sbatch --parsable --hold --job-name={name} "
        "--output=/dev/null --wrap true || exit 1; done"
    )
    done = subprocess.run(
        ["runuser", "-u", user, "--", "bash", "-c", script],
        check=True,
        capture_output=True,
        text=True,
    )
    return [line.split(";")[0] for line in done.stdout.split()]


def rss_mib() -> tuple[float, float]:
    """This process's resident memory now and at its peak (MiB)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def clusters_of(projects: list[ProjectRef]) -> dict[ProjectRef, ClusterHandle]:
    base, _ = stack_cluster()
    return {p: dataclasses.replace(base, name=f"{base.name}-ep{i}") for i, p in enumerate(projects)}


def ten_clusters(total: int, clusters: int, cycles: int) -> dict[str, object]:
    limit = max_job_count()
    if total > limit:
        raise RuntimeError(f"MaxJobCount is {limit}: fewer than the {total} jobs asked for")
    slurm("scancel", f"--name={HELD_NAME}", check=False)
    started = time.perf_counter()
    job_ids = submit_held(total)
    submitted = time.perf_counter() - started
    try:
        projects = [
            ProjectRef.parse(VLAB, f"0b7e2d41-5c3f-4e6a-9b8d-{i:012d}") for i in range(clusters)
        ]
        by_project = clusters_of(projects)
        _, secrets = stack_cluster()
        rss_before = rss_mib()[0]
        repo = FakeRunRepository()
        request = SimulationRequest.parse({"command": ["true"]})
        for i, job_id in enumerate(job_ids):
            project = projects[i % clusters]
            at = datetime.now(UTC)
            run = SimulationRun.accept(
                RunHeader(f"cmp-{i:08d}", project, Requester("s", "bench"), request, at)
            )
            run.start_provisioning(at)
            run.cluster_ready(at, by_project[project].name)
            run.job_submitted(at, job_id)
            repo.add(run)
        pool = SshPool(secrets, POOL)
        clock = SystemClock()
        service = application(
            run_repository=repo,
            cluster_provisioner=FakeClusterProvisioner(
                ready_after=0, cluster_for=lambda p: by_project[p]
            ),
            cluster_gateway=SlurmClusterGateway(pool),
            data_synchronizer=None,  # type: ignore[arg-type]  # not reached: no run leaves QUEUED
            knowledge_graph=None,  # type: ignore[arg-type]
            instance_orchestrator=FakeInstanceOrchestrator(clock),
            clock=clock,
            id_generator=FakeIdGenerator(),
            event_publisher=FakeEventPublisher(),
        )
        for project in projects:
            service.pipeline.cluster_provisioner.request(project)
        service.pipeline.monitor_cycle()  # connects the ten endpoints; the first change
        rows = []
        with Sessions() as sessions:
            for _ in range(cycles):
                sent, rpcs = pool.commands_sent(), sdiag_rpcs()
                cpu, wall = time.process_time(), time.perf_counter()
                report = service.pipeline.monitor_cycle()
                took, used = time.perf_counter() - wall, time.process_time() - cpu
                rows.append(
                    {
                        "commands": pool.commands_sent() - sent,
                        "rpcs": sdiag_rpcs() - rpcs,
                        "wall": took,
                        "cpu": used,
                        "rss": rss_mib()[0],
                    }
                )
                if report.jobs_polled != total or report.clusters_polled != clusters:
                    raise RuntimeError(f"a cycle saw {report}")
        pool.close()
        return {
            "total": total,
            "clusters": clusters,
            "max_job_count": limit,
            "submit_seconds": submitted,
            "cycles": rows,
            "rss_before_runs": rss_before,
            "rss_peak": rss_mib()[1],
            "sessions_peak": max(sessions.samples, default=0),
        }
    finally:
        slurm("scancel", f"--name={HELD_NAME}", check=False)
