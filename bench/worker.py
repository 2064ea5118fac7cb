"""The worker against the real test stack: latency of a trivial job, and the cost of waiting.

    .venv/bin/python bench/worker.py [--runs 20] [--waiting 1000]     (the stack must be up)

The service as one process: the local gateway (real HTTP, the API handler) and the worker
(a thread, its luigid in the same process) over in-memory runs, with the real Slurm of the
test stack reached over SSH (``SlurmClusterGateway``). Jobs have no outputs, so the sync is a
direct upload of nothing and registration goes to the local graph (SQLite): what is measured
is the worker's own overhead on top of the scheduler.

1. Latency, one run at a time: POST -> the job's completion observed on the run (its SYNCING
   event), and POST -> DONE; beside it the floor: ``sbatch`` on the head node then ``squeue``
   every 0.1 s until the job has left the queue.
2. Waiting: ``--waiting`` runs submitted at once while the partition is down (their jobs stay
   PENDING): intake time (POST of all -> all QUEUED), then over a quiet window the worker's
   CPU (luigid's server thread apart too), scheduler commands per poll and repository reads per
   poll; then the partition comes up, every job completes, and each completion's delay to the
   run's next step is taken from the accounting record (End, to the second) and the run's
   SYNCING event.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.contract.harness_slurm import stack_cluster  # noqa: E402
from tests.stack import slurm, stack  # noqa: E402

from obp_workflow.adapters.fake.cluster_provisioner import FakeClusterProvisioner  # noqa: E402
from obp_workflow.adapters.fake.run_repository import FakeRunRepository  # noqa: E402
from obp_workflow.adapters.fake.token_verifier import FakeTokenVerifier  # noqa: E402
from obp_workflow.adapters.ssh.connection import PoolSettings, SshPool  # noqa: E402
from obp_workflow.adapters.ssh.slurm import SlurmClusterGateway  # noqa: E402
from obp_workflow.core.identity import Principal, ProjectRef, parse_groups  # noqa: E402
from obp_workflow.core.run import RunBrief, RunState, SimulationRun  # noqa: E402
from obp_workflow.entrypoints.composition.root import build  # noqa: E402
from obp_workflow.entrypoints.composition.settings import load_settings  # noqa: E402
from obp_workflow.entrypoints.local.gateway import make_server  # noqa: E402
from obp_workflow.entrypoints.worker.process import Worker, WorkerConfig  # noqa: E402

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = ProjectRef.parse(VLAB, "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20")
TOKEN = "bench-token"
ADA = Principal("bench", "bench", parse_groups([f"/proj/{VLAB}/{PROJECT.project_id}/member"]))
#: For the latency, the worker polls every 0.1 s (its SSH query budget raised to match); for
#: the cost of waiting, every second (the default).
FAST_POLL = 0.1
DEFAULT_POLL = 1.0
#: The API gateway's threads (its server and handler pool): in production the API is a Lambda,
#: not part of the worker's process, so its idle cost is not the worker's.
GATEWAY_THREADS = "obp-local-gateway"
POOL = PoolSettings(queries_per_minute=6000, connects_per_minute=60)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class CountingRuns(FakeRunRepository):
    """The in-memory repository, counting whole-run reads and light listings."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.listings = 0

    def get(self, project: ProjectRef, run_id: str) -> SimulationRun:
        self.gets += 1
        return super().get(project, run_id)

    def list_active(self, project: ProjectRef | None = None) -> Sequence[RunBrief]:
        self.listings += 1
        return super().list_active(project)


class Service:
    def __init__(self, poll: float) -> None:
        cluster, secrets = stack_cluster()
        self.pool = SshPool(secrets, POOL)
        self.runs = CountingRuns()
        self.container = build(
            load_settings(),
            run_repository=self.runs,
            cluster_gateway=SlurmClusterGateway(self.pool),
            cluster_provisioner=FakeClusterProvisioner(
                ready_after=0, cluster_for=lambda _: cluster
            ),
            secret_store=secrets,
            token_verifier=FakeTokenVerifier({TOKEN: ADA}),
        )
        self.gateway = make_server("127.0.0.1", 0, self.container)
        threading.Thread(
            target=self.gateway.serve_forever, name=GATEWAY_THREADS, daemon=True
        ).start()
        self.worker = Worker(
            PROJECT,
            self.container.pipeline(),
            self.runs,
            self.container.instance_orchestrator(),
            WorkerConfig(
                threads=4, poll=poll, sweep=30, provisioning_poll=poll, idle=0, luigid_port=0
            ),
        )
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()
        self.http = httpx.Client(base_url=self.gateway.url, timeout=30)
        self.url = f"/v1/virtual-labs/{VLAB}/projects/{PROJECT.project_id}/runs"

    def post(self, command: list[str]) -> tuple[str, datetime, float]:
        at = datetime.now(UTC)
        started = time.perf_counter()
        answer = self.http.post(
            self.url,
            json={"command": command, "resources": {"time_limit_minutes": 5}},
            headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": uuid.uuid4().hex},
        )
        answer.raise_for_status()
        return answer.json()["run_id"], at, time.perf_counter() - started

    def run(self, run_id: str) -> SimulationRun:
        return FakeRunRepository.get(self.runs, PROJECT, run_id)

    def wait(
        self, run_ids: Sequence[str], done: Callable[[SimulationRun], bool], limit: float
    ) -> None:
        deadline = time.monotonic() + limit
        for run_id in run_ids:
            while not done(self.run(run_id)):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"run {run_id}: {self.run(run_id).states()}")
                time.sleep(0.02)

    def close(self) -> None:
        self.worker.stop()
        self.thread.join(30)
        self.gateway.shutdown()
        self.pool.close()


def entered(run: SimulationRun, state: RunState) -> datetime:
    return next(e.at for e in run.events if e.to_state is state and e.is_transition)


def latency(service: Service, runs: int) -> dict[str, list[float]]:
    completed, done, floor = [], [], []
    for _ in range(runs):
        run_id, posted, _ = service.post(["true"])
        service.wait([run_id], lambda r: r.terminal, 120)
        run = service.run(run_id)
        assert run.state is RunState.DONE, (run.states(), run.failure_reason)
        completed.append((entered(run, RunState.SYNCING) - posted).total_seconds())
        done.append((entered(run, RunState.DONE) - posted).total_seconds())
    user = stack().user("sim")
    for _ in range(runs):
        started = time.perf_counter()
        job = (
            subprocess.run(
                [
                    "runuser",
                    "-u",
                    user,
                    "--",
                    "sbatch",
                    "--parsable",
                    "--output=/dev/null",
                    "--chdir=/tmp",
                    "--wrap",
                    "true",
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .split(";")[0]
        )
        while True:
            state = slurm("squeue", "-h", "-j", job, "-o", "%T", check=False).strip()
            if state in ("", "COMPLETED", "COMPLETING"):
                break
            time.sleep(0.1)
        floor.append(time.perf_counter() - started)
    return {"completed": completed, "done": done, "floor": floor}


def thread_cpu(skip_prefix: str) -> tuple[float, float]:
    """CPU seconds of this process's threads: (all, those not named ``skip_prefix*``)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    total = kept = 0.0
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        used = (int(fields[11]) + int(fields[12])) / tick
        total += used
        if not names.get(int(task.name), "").startswith(skip_prefix):
            kept += used
    return total, kept


def luigid_cpu(service: Service) -> float:
    """CPU seconds of luigid's server thread (the visualiser, the RPC API, the prune); the
    scheduler calls of the builds are counted with the build threads that make them."""
    thread = service.worker.luigid.thread
    if thread is None or thread.native_id is None:
        return 0.0
    return task_cpu(thread.native_id)


def task_cpu(native_id: int) -> float:
    try:
        stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    except FileNotFoundError:
        return 0.0  # the thread ended
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def waiting(service: Service, count: int, window: float) -> dict[str, float]:
    partition = stack().partition
    slurm("scontrol", "update", f"PartitionName={partition}", "State=DOWN")
    try:
        started = time.perf_counter()
        posted = [service.post(["true"]) for _ in range(count)]
        api = [p[2] for p in posted]
        ids = [p[0] for p in posted]
        service.wait(ids, lambda r: r.state is RunState.QUEUED, 600)
        intake = time.perf_counter() - started
        time.sleep(3)  # the builds of the last runs end
        (cpu, worker_cpu), luigid = thread_cpu(GATEWAY_THREADS), luigid_cpu(service)
        wall = time.perf_counter()
        sent, gets, listings = (
            service.pool.commands_sent(),
            service.runs.gets,
            service.runs.listings,
        )
        time.sleep(window)
        wall = time.perf_counter() - wall
        polls = service.runs.listings - listings
        result = {
            "count": count,
            "intake": intake,
            "api_p50": statistics.median(api),
            "api_p99": percentile(api, 99),
            "cpu": (thread_cpu(GATEWAY_THREADS)[0] - cpu) / wall,
            "worker_cpu": (thread_cpu(GATEWAY_THREADS)[1] - worker_cpu) / wall,
            "luigid_cpu": (luigid_cpu(service) - luigid) / wall,
            "commands_per_poll": (service.pool.commands_sent() - sent) / max(1, polls),
            "gets_per_poll": (service.runs.gets - gets) / max(1, polls),
            "polls": polls,
        }
    finally:
        slurm("scontrol", "update", f"PartitionName={partition}", "State=UP")
    service.wait(ids, lambda r: r.state not in (RunState.QUEUED, RunState.RUNNING), 900)
    delays = []
    for run_id in ids:
        run = service.run(run_id)
        end = slurm("sacct", "-X", "-n", "-P", "-j", str(run.job_id), "-o", "End").strip()
        ended = datetime.fromisoformat(end.splitlines()[0]).astimezone(UTC)
        delays.append((entered(run, RunState.SYNCING) - ended).total_seconds())
    result["next_step_p50"] = statistics.median(delays)
    result["next_step_p95"] = percentile(delays, 95)
    service.wait(ids, lambda r: r.terminal, 900)
    return result


def section(lat: dict[str, list[float]], wait: dict[str, float], window: float) -> list[str]:
    def row(name: str, values: list[float], target: str) -> str:
        return (
            f"| {name} | {statistics.median(values):.2f} | {percentile(values, 95):.2f} | "
            f"{target} |"
        )

    runs = len(lat["done"])
    return [
        "## The worker on the test stack",
        "",
        "`bench/worker.py`: the local gateway and the worker in one process, in-memory runs, the "
        "stack's Slurm over SSH. Jobs are `true` with no outputs (a direct upload of nothing); "
        "registration takes the job's record from the controller when slurmdbd has not "
        "completed its own yet (it does a few seconds after the job ends).",
        "",
        f"### One trivial job at a time ({runs} runs; the worker polls every {FAST_POLL} s)",
        "",
        "| from the POST to | median (s) | p95 (s) | target |",
        "|---|---:|---:|---|",
        row("the job's completion observed on the run", lat["completed"], "1.2 / 1.5 s"),
        row("DONE", lat["done"], "2.5 s"),
        row("floor: `sbatch` on the head node, `squeue` every 0.1 s until gone", lat["floor"], ""),
        "",
        f"### {int(wait['count']):,} runs waiting on pending jobs (the partition down; the worker "
        f"polls every {DEFAULT_POLL:.0f} s, the default)",
        "",
        f"- intake: {int(wait['count']):,} POSTs through the gateway until every job is queued "
        f"in Slurm: {wait['intake']:.1f} s (API p50 {wait['api_p50'] * 1000:.1f} ms, "
        f"p99 {wait['api_p99'] * 1000:.1f} ms);",
        f"- between events, over {window:.0f} s: the worker's CPU "
        f"{wait['worker_cpu'] * 100:.2f}% of a core, luigid's server thread among it "
        f"{wait['luigid_cpu'] * 100:.2f}% (target: under 1%; the whole bench process, the idle "
        "API gateway included, "
        f"{wait['cpu'] * 100:.2f}%); "
        f"{wait['commands_per_poll']:.2f} scheduler commands and {wait['gets_per_poll']:.2f} "
        f"whole-run reads per poll ({int(wait['polls'])} polls; one light listing each);",
        f"- then the partition comes up and every job completes: from a job's end (accounting, to "
        f"the second) to its run's next step, median {wait['next_step_p50']:.2f} s, p95 "
        f"{wait['next_step_p95']:.2f} s (target: 1.5 s at p95).",
        "",
    ]


def run_all(runs: int, count: int, window: float) -> list[str]:
    service = Service(FAST_POLL)
    try:
        print(f"worker: latency of {runs} trivial runs")
        lat = latency(service, runs)
    finally:
        service.close()
    service = Service(DEFAULT_POLL)
    try:
        print(f"worker: {count} waiting runs")
        wait = waiting(service, count, window)
    finally:
        service.close()
    return section(lat, wait, window)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--waiting", type=int, default=1000)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    print("\n".join(run_all(args.runs, args.waiting, args.window)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
