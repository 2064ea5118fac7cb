"""Benchmarks of the cluster adapter on the real test stack; results go to docs/benchmarks.md.

    make bench                     (the stack must be up: make stack-up)
    .venv/bin/python bench/run.py --sizes 100 1000 10000 --latency-samples 50

1. Per-command latency, side by side: the pooled connection (one long-lived SSH connection,
   each command a channel), a new paramiko connection per command, and the OpenSSH command line
   per command (what the legacy service did). Median and p95.
2. The cost of one monitor cycle with 100, 1,000 and 10,000 active runs whose jobs are held on
   the test cluster: scheduler commands issued, wall time, and the service's own CPU time.
3. The worker (bench/worker.py): a trivial job's latency from the POST, and 1,000 runs waiting.
4. Side by side (bench/compare.py): this service, the previous generation's way, PSI/J and the
   floor with the same jobs; 1,000 runs through the API; 10,000 active runs over ten clusters.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import paramiko

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.application import application  # noqa: E402
from tests.contract.harness_slurm import stack_cluster  # noqa: E402
from tests.stack import STACK_DIR, slurm, stack  # noqa: E402

from bench import compare, compare_scale, lambda_cold_start  # noqa: E402
from bench.worker import run_all as worker_section  # noqa: E402
from obp_workflow.adapters.fake.cluster_provisioner import FakeClusterProvisioner  # noqa: E402
from obp_workflow.adapters.fake.event_publisher import FakeEventPublisher  # noqa: E402
from obp_workflow.adapters.fake.id_generator import FakeIdGenerator  # noqa: E402
from obp_workflow.adapters.fake.instance_orchestrator import FakeInstanceOrchestrator  # noqa: E402
from obp_workflow.adapters.fake.run_repository import FakeRunRepository  # noqa: E402
from obp_workflow.adapters.ssh.connection import Endpoint, PoolSettings, SshPool  # noqa: E402
from obp_workflow.adapters.ssh.slurm import SlurmClusterGateway  # noqa: E402
from obp_workflow.adapters.system.clock import SystemClock  # noqa: E402
from obp_workflow.core.cluster import KeyRole  # noqa: E402
from obp_workflow.core.identity import ProjectRef  # noqa: E402
from obp_workflow.core.request import SimulationRequest  # noqa: E402
from obp_workflow.core.run import Requester, RunHeader, SimulationRun  # noqa: E402

PROJECT = ProjectRef.parse(
    "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10", "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20"
)
BENCH_POOL = PoolSettings(connects_per_minute=10_000, queries_per_minute=1_000_000)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(action: Callable[[], object], samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return times


# ============================================================== 1. per-command latency


def latency(samples: int) -> list[tuple[str, str, float, float]]:
    cluster, secrets = stack_cluster()
    st = stack()
    user = st.user("sim")
    key_file = st.raw["users"]["sim"]["private_key"]
    known_hosts = st.raw["ssh"]["known_hosts"]
    pool = SshPool(secrets, BENCH_POOL)
    endpoint = Endpoint.of(cluster, KeyRole.USER)
    commands = {"true": ["true"], "squeue": ["squeue", "--noheader", "--user", user]}
    rows = []
    pool.run(endpoint, ["true"])  # the pool's one connection, opened once

    def fresh_paramiko(argv: list[str]) -> None:
        client = paramiko.SSHClient()
        client.load_host_keys(known_hosts)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            st.host,
            st.port,
            username=user,
            key_filename=key_file,
            look_for_keys=False,
            allow_agent=False,
        )
        try:
            _, out, _ = client.exec_command(shlex.join(argv))
            out.channel.recv_exit_status()
            out.read()
        finally:
            client.close()

    def openssh_cli(argv: list[str]) -> None:
        subprocess.run(
            [
                "ssh",
                "-i",
                key_file,
                "-p",
                str(st.port),
                "-o",
                f"UserKnownHostsFile={known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                f"{user}@{st.host}",
                shlex.join(argv),
            ],
            check=True,
            capture_output=True,
        )

    for name, argv in commands.items():
        ways: dict[str, Callable[[], object]] = {
            "pooled connection (this service)": lambda a=argv: pool.run(endpoint, a),
            "new paramiko connection per command": lambda a=argv: fresh_paramiko(a),
            "OpenSSH command line per command (legacy)": lambda a=argv: openssh_cli(a),
        }
        for way, action in ways.items():
            times = timed(action, samples)
            rows.append((name, way, statistics.median(times), percentile(times, 0.95)))
            print(f"  {name:7} {way:44} median {rows[-1][2]:7.1f} ms  p95 {rows[-1][3]:7.1f} ms")
    pool.close()
    return rows


# ============================================================== 2. monitor cycle cost


def cancel_bench_jobs() -> None:
    slurm("scancel", "--name=obp-bench", check=False)


def monitor_cost(sizes: Sequence[int], cycles: int) -> list[dict[str, float]]:
    cluster, secrets = stack_cluster()
    results = []
    for size in sizes:
        cancel_bench_jobs()
        t0 = time.perf_counter()
        job_ids = compare_scale.submit_held(size, "obp-bench")
        print(
            f"  {size:>6} runs: {len(job_ids)} held jobs submitted in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        repo = FakeRunRepository()
        clock = SystemClock()
        request = SimulationRequest.parse({"command": ["true"]})
        for i, job_id in enumerate(job_ids):
            run = SimulationRun.accept(
                RunHeader(
                    f"bench-{i:08d}", PROJECT, Requester("s", "bench"), request, datetime.now(UTC)
                )
            )
            now = datetime.now(UTC)
            run.start_provisioning(now)
            run.cluster_ready(now, cluster.name)
            run.job_submitted(now, job_id)
            repo.add(run)
        pool = SshPool(secrets, BENCH_POOL)
        service = application(
            run_repository=repo,
            cluster_provisioner=FakeClusterProvisioner(
                ready_after=0, cluster_for=lambda _p: cluster
            ),
            cluster_gateway=SlurmClusterGateway(pool),
            data_synchronizer=None,  # type: ignore[arg-type]  # not reached: no run leaves QUEUED
            knowledge_graph=None,  # type: ignore[arg-type]
            instance_orchestrator=FakeInstanceOrchestrator(clock),
            clock=clock,
            id_generator=FakeIdGenerator(),
            event_publisher=FakeEventPublisher(),
        )
        service.pipeline.cluster_provisioner.request(PROJECT)
        # Connect, and the first change (PENDING raw line recorded).
        service.pipeline.monitor_cycle()
        walls, cpus, commands = [], [], []
        for _ in range(cycles):
            sent = pool.commands_sent()
            cpu, wall = time.process_time(), time.perf_counter()
            report = service.pipeline.monitor_cycle()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
            commands.append(pool.commands_sent() - sent)
            assert report.jobs_polled == size, report
        row = {
            "size": size,
            "commands": max(commands),
            "wall": statistics.median(walls),
            "cpu": statistics.median(cpus),
            "cpu_max": max(cpus),
        }
        print(
            f"  {size:>6} runs: {row['commands']} scheduler commands per cycle, "
            f"wall {row['wall'] * 1000:.0f} ms, service CPU {row['cpu'] * 1000:.0f} ms "
            f"(max {row['cpu_max'] * 1000:.0f} ms)"
        )
        results.append(row)
        pool.close()
        cancel_bench_jobs()
    return results


# ============================================================== report


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    slurm_version = slurm("sinfo", "--version", check=False).strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.platform()}, "
        f"Python {platform.python_version()}, paramiko {paramiko.__version__}, "
        f"{slurm_version}; the test stack on loopback ({STACK_DIR})"
    )


def write_report(
    command: str,
    lat: list[tuple[str, str, float, float]],
    mon: list[dict[str, float]],
    cycles: int,
    extra: list[str],
) -> None:
    out = REPO / "docs" / "benchmarks.md"
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC with `{command}`.",
        "",
        f"Machine: {machine()}.",
        "",
        "## Per-command latency over SSH",
        "",
        "| command | how | median (ms) | p95 (ms) |",
        "|---|---|---:|---:|",
        *(f"| `{c}` | {w} | {m:.1f} | {p:.1f} |" for c, w, m, p in lat),
        "",
        "## One monitor cycle",
        "",
        f"Active runs whose jobs are held on the test cluster; median of {cycles} cycles after "
        "a first one (which connects). Targets: 1 squeue + at most 1 sacct per cycle at every "
        "size; under 1 s of the service's own CPU for 10,000 jobs.",
        "",
        "| active runs | scheduler commands per cycle | wall (ms) | service CPU (ms) | "
        "CPU, worst cycle (ms) |",
        "|---:|---:|---:|---:|---:|",
        *(
            f"| {r['size']:,} | {r['commands']} | {r['wall'] * 1000:.0f} | "
            f"{r['cpu'] * 1000:.0f} | {r['cpu_max'] * 1000:.0f} |"
            for r in mon
        ),
        "",
        "Service CPU is the process CPU time of the benchmark process during the cycle "
        "(`time.process_time`): reading the runs, the SSH channel and its crypto, parsing, and "
        "applying the answers; the scheduler's own CPU is not included.",
        "",
        *extra,
    ]
    out.write_text("\n".join(lines))
    print(f"written {out}")


def lambda_section() -> list[str]:
    """The Lambda handlers' cold start and warm latency (bench/lambda_cold_start.py)."""
    script = REPO / "bench" / "lambda_cold_start.py"
    done = subprocess.run(
        [sys.executable, str(script)], check=True, capture_output=True, text=True, cwd=REPO
    )
    return lambda_cold_start.section(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--worker-runs", type=int, default=20)
    parser.add_argument("--worker-waiting", type=int, default=1000)
    parser.add_argument("--worker-window", type=float, default=20.0)
    parser.add_argument("--compare-jobs", type=int, default=20)
    args = parser.parse_args()
    command = "make bench"
    if sys.argv[1:]:
        command = ".venv/bin/python bench/run.py " + " ".join(sys.argv[1:])
    print("per-command latency:")
    lat = latency(args.latency_samples)
    print("monitor cycle cost:")
    mon = monitor_cost(args.sizes, args.cycles)
    print("the worker:")
    worker = worker_section(args.worker_runs, args.worker_waiting, args.worker_window)
    print("side by side:")
    side = compare.run(compare.parser().parse_args(["--jobs", str(args.compare_jobs)]), command)
    print("lambda handlers:")
    write_report(command, lat, mon, args.cycles, [*worker, *side, *lambda_section()])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
