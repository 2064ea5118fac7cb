"""Ways of running jobs on the head node itself, as the cluster's user (run by bench/compare.py).

    runuser -u obpsim -- env PYTHONPATH=<psij> python3 bench/headnode.py MODE [options]

Standalone on purpose: it runs with the head node's own Python (not the project's venv), as the
stack's user, and imports nothing of the project; PSI/J is imported only in ``psij`` mode.

- ``floor``: ``sbatch`` then ``squeue`` every 0.1 s until the job has left the queue (or shows
  as completed); with many jobs, one ``squeue`` of them all every 0.1 s.
- ``psij``: PSI/J's Slurm executor with its default configuration (its queue polling), one
  ``Job`` per submission, completion taken from its status callback.

Jobs are started ``--stagger`` seconds apart (0: all at once). Prints one JSON object: each
job's seconds from its submission to its completion observed, the wall time, this process's
CPU seconds with its children's (the sbatch and squeue processes), the scheduler commands run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import subprocess
import threading
import time
from collections.abc import Callable

GONE = ("", "COMPLETED", "CD", "COMPLETING", "CG")


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def staggered(count: int, stagger: float, submit: Callable[[int], None]) -> None:
    start = time.perf_counter()
    for i in range(count):
        delay = start + i * stagger - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        submit(i)


def floor(command: str, count: int, stagger: float) -> dict[str, object]:
    submitted: dict[str, float] = {}
    done: dict[str, float] = {}
    commands = 0
    lock = threading.Lock()

    def submit(_: int) -> None:
        nonlocal commands
        at = time.perf_counter()
        out = subprocess.run(
            ["sbatch", "--parsable", "--output=/dev/null", "--wrap", command],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        with lock:
            commands += 1
            submitted[out.strip().split(";")[0]] = at

    feeder = threading.Thread(target=staggered, args=(count, stagger, submit))
    feeder.start()
    while feeder.is_alive() or len(done) < count:
        with lock:
            waiting = [j for j in submitted if j not in done]
        if waiting:
            out = subprocess.run(
                ["squeue", "-h", "-t", "all", "-j", ",".join(waiting), "-o", "%i %T"],
                check=False,
                capture_output=True,
                text=True,
            ).stdout
            with lock:
                commands += 1
            states = dict(line.split() for line in out.splitlines() if line.strip())
            now = time.perf_counter()
            for job in waiting:
                if states.get(job, "") in GONE:
                    done[job] = now - submitted[job]
        time.sleep(0.1)
    feeder.join()
    return {"latencies": list(done.values()), "commands": commands}


def psij(command: str, count: int, stagger: float) -> dict[str, object]:
    psij_api = importlib.import_module("psij")  # imported by main() before the CPU count

    executor = psij_api.JobExecutor.get_instance("slurm")
    commands = 0
    run_command = executor._run_command  # counted, then run as PSI/J runs it

    def counted(argv: list[str]) -> str:
        nonlocal commands
        commands += 1
        return run_command(argv)

    executor._run_command = counted  # type: ignore[method-assign]
    submitted: dict[str, float] = {}
    done: dict[str, float] = {}
    failed: list[str] = []
    finished = threading.Event()

    def on_status(job: object, status: object) -> None:
        state = status.state  # type: ignore[attr-defined]
        if state.final:
            at = time.perf_counter()
            key = job.id  # type: ignore[attr-defined]
            done[key] = at - submitted[key]
            if str(state) != "COMPLETED":
                failed.append(f"{key}: {state} {status.message}")  # type: ignore[attr-defined]
            if len(done) == count:
                finished.set()

    executor.set_job_status_callback(on_status)

    def submit(_: int) -> None:
        job = psij_api.Job(
            psij_api.JobSpec(executable="/bin/sh", arguments=["-c", command], directory="/tmp")
        )
        submitted[job.id] = time.perf_counter()
        executor.submit(job)

    staggered(count, stagger, submit)
    finished.wait(3600)
    return {"latencies": list(done.values()), "commands": commands, "failed": failed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["floor", "psij"])
    parser.add_argument("--command", default="true")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--stagger", type=float, default=0.0)
    args = parser.parse_args()
    if args.mode == "psij":
        importlib.import_module("psij")  # the head node's install (on PYTHONPATH), not counted
    cpu, wall = cpu_seconds(), time.perf_counter()
    way = floor if args.mode == "floor" else psij
    result = way(args.command, args.jobs, args.stagger)
    result["wall"] = time.perf_counter() - wall
    result["cpu"] = cpu_seconds() - cpu
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
