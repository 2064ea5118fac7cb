"""The four ways of running the same jobs, each measured the same way (bench/compare.py).

Each way takes a shell command, a number of jobs and the seconds between two submissions
(0: all at once) and returns a ``Batch``: every job's seconds from its submission to its
completion observed by that way, the wall time, the CPU of the way's own processes, the
scheduler commands it ran, the SSH sessions held on the head node (sampled every 0.1 s) and the
RPCs that slurmctld counted for the stack's users (``sdiag``, before and after).
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.stack import slurm, stack  # noqa: E402

from bench.worker import GATEWAY_THREADS, Service, entered, luigid_cpu  # noqa: E402
from obp_workflow.core.run import RunState  # noqa: E402

HEADNODE = REPO / "bench" / "headnode.py"
#: The head node's own Python (the stack's user cannot reach the project's venv).
HEAD_PYTHON = "/usr/bin/python3"
SAMPLER = "obp-bench-sessions"


@dataclass
class Batch:
    latencies: list[float]
    wall: float
    cpu: float
    commands: int
    sessions_peak: int = 0
    sessions_mean: float = 0.0
    rpcs: int = 0
    done: list[float] = field(default_factory=list)  # this service: POST -> DONE
    queued: list[float] = field(default_factory=list)  # this service: POST -> job submitted
    luigid_cpu: float = 0.0  # this service: luigid's server thread's share of ``cpu``
    notes: list[str] = field(default_factory=list)


# ============================================================== what is counted on the head node


def established(port: int) -> int:
    """TCP connections established to ``port`` on this machine (the server's side)."""
    wanted = f":{port:04X}"
    seen: set[tuple[str, str]] = set()  # a read under churn may list a socket twice
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[1].endswith(wanted) and fields[3] == "01":
                seen.add((fields[1], fields[2]))
    return len(seen)


class Sessions:
    """SSH sessions held on the head node, sampled every 0.1 s in a thread of its own."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name=SAMPLER, daemon=True)

    def _sample(self) -> None:
        port = stack().port
        while not self._stop.is_set():
            self.samples.append(established(port))
            time.sleep(0.1)

    def __enter__(self) -> Sessions:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def sdiag_rpcs() -> int:
    """RPCs slurmctld has served for the stack's two users since its statistics were reset."""
    users = {stack().user("sim"), stack().user("admin")}
    text = slurm("sdiag")
    count = 0
    by_user = text.split("statistics by user", 1)[1] if "statistics by user" in text else ""
    for line in by_user.splitlines():
        parts = line.split()
        if parts and parts[0] in users:
            count += int(line.split("count:", 1)[1].split()[0])
    return count


def run_counted(way: Callable[[], Batch]) -> Batch:
    """Runs ``way``, counting slurmctld's RPCs and the SSH sessions held meanwhile beyond those
    open before it started (none, when the stack is left alone)."""
    before, held = sdiag_rpcs(), established(stack().port)
    with Sessions() as sessions:
        batch = way()
    batch.rpcs = sdiag_rpcs() - before
    samples = [max(0, s - held) for s in sessions.samples]
    batch.sessions_peak = max(samples, default=0)
    batch.sessions_mean = sum(samples) / max(1, len(samples))
    if held:
        batch.notes.append(f"{held} SSH connections open before it started, not counted")
    return batch


def schedule(count: int, stagger: float) -> Iterator[int]:
    start = time.perf_counter()
    for i in range(count):
        delay = start + i * stagger - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i


# ============================================================== this service


def service_cpu(service: Service) -> float:
    """CPU seconds of the service: the worker's threads, luigid's among them; not the API
    gateway's threads (a Lambda in production), nor the benchmark's main thread and sampler."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    skip = (GATEWAY_THREADS, SAMPLER, "MainThread")
    tick = os.sysconf("SC_CLK_TCK")
    used = 0.0
    for task in Path("/proc/self/task").iterdir():
        if names.get(int(task.name), "").startswith(skip):
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        used += (int(fields[11]) + int(fields[12])) / tick
    return used


def this_service(service: Service, command: str, count: int, stagger: float) -> Batch:
    argv = shlex.split(command)
    cpu, wall, luigid = service_cpu(service), time.perf_counter(), luigid_cpu(service)
    sent = service.pool.commands_sent()
    posted: list[tuple[str, datetime]] = []
    for _ in schedule(count, stagger):
        run_id, at, _ = service.post(argv)
        posted.append((run_id, at))
    service.wait([r for r, _ in posted], lambda r: r.terminal, 900)
    batch = Batch([], time.perf_counter() - wall, 0.0, service.pool.commands_sent() - sent)
    batch.cpu = service_cpu(service) - cpu
    batch.luigid_cpu = luigid_cpu(service) - luigid
    for run_id, at in posted:
        run = service.run(run_id)
        if run.state is not RunState.DONE:
            raise RuntimeError(f"run {run_id} ended {run.state.value}: {run.failure_reason}")
        batch.latencies.append((entered(run, RunState.SYNCING) - at).total_seconds())
        batch.done.append((entered(run, RunState.DONE) - at).total_seconds())
        batch.queued.append((entered(run, RunState.QUEUED) - at).total_seconds())
    return batch


# ============================================================== the previous generation's way


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def legacy(command: str, count: int, stagger: float) -> Batch:
    """A new OpenSSH client process per command, one ``sbatch --wait`` per job: the session
    stays open while the job waits and runs."""
    st = stack()
    raw = st.raw
    ssh = [
        "ssh",
        "-i",
        raw["users"]["sim"]["private_key"],
        "-p",
        str(st.port),
        "-o",
        f"UserKnownHostsFile={raw['ssh']['known_hosts']}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        f"{st.user('sim')}@{st.host}",
        shlex.join(
            [
                *("sbatch", "--wait", "--parsable", "--output=/dev/null", "--chdir=/tmp"),
                *("--wrap", command),
            ]
        ),
    ]
    cpu, wall = children_cpu(), time.perf_counter()
    running: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
    latencies: list[float] = []
    processes = refused = 0

    def start(i: int, at: float) -> None:
        nonlocal processes
        processes += 1
        running[i] = (subprocess.Popen(ssh, stdout=subprocess.PIPE, stderr=subprocess.PIPE), at)

    def reap() -> None:
        nonlocal refused
        for i, (proc, at) in list(running.items()):
            if proc.poll() is None:
                continue
            out, err = proc.communicate()
            del running[i]
            if proc.returncode == 255 and not out.strip():
                refused += 1  # sshd dropped the connection before sbatch ran: start it again
                start(i, at)
            elif proc.returncode != 0:
                raise RuntimeError(f"legacy job {i}: exit {proc.returncode}: {err.decode()[:300]}")
            else:
                latencies.append(time.perf_counter() - at)

    for i in schedule(count, stagger):
        start(i, time.perf_counter())
        reap()
    while running:
        reap()
        time.sleep(0.01)
    batch = Batch(latencies, time.perf_counter() - wall, children_cpu() - cpu, processes)
    if refused:
        batch.notes.append(f"{refused} connections dropped by sshd (MaxStartups) and started again")
    return batch


# ============================================================== on the head node: PSI/J, the floor


def psij_dir() -> Path:
    """PSI/J for the head node's Python, the version the dev extra pins, installed once into a
    folder the stack's user can read."""
    version = metadata.version("psij-python")
    target = Path(f"/var/tmp/obp-bench-psij-{version}")
    if not (target / "psij").is_dir():
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target)),
                f"psij-python=={version}",
            ],
            check=True,
        )
        subprocess.run(["chmod", "-R", "a+rX", str(target)], check=True)
    return target


def head_node(mode: str, command: str, count: int, stagger: float) -> Batch:
    """``bench/headnode.py`` run as the stack's user with the head node's Python."""
    st = stack()
    argv = ["runuser", "-u", st.user("sim"), "--", "env", f"HOME={st.home('sim')}"]
    if mode == "psij":
        argv.append(f"PYTHONPATH={psij_dir()}")
    argv += [HEAD_PYTHON, str(HEADNODE), mode, "--command", command]
    argv += ["--jobs", str(count), "--stagger", str(stagger)]
    done = subprocess.run(
        argv, check=False, capture_output=True, text=True, cwd="/tmp", timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(f"headnode.py {mode}: {done.stderr.strip()[-800:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    batch = Batch(result["latencies"], result["wall"], result["cpu"], result["commands"])
    if result.get("failed"):
        raise RuntimeError(f"headnode.py {mode}: jobs did not complete: {result['failed'][:3]}")
    if len(batch.latencies) != count:
        raise RuntimeError(f"headnode.py {mode}: {len(batch.latencies)} of {count} jobs seen")
    return batch


def psij_version() -> str:
    return metadata.version("psij-python")


def now() -> str:
    return f"{datetime.now(UTC):%Y-%m-%d %H:%M}"
