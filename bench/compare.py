"""Side by side on the test stack: this service, the previous generation's way, PSI/J's Slurm
executor and the floor, with the same trivial jobs; results go to docs/benchmarks.md.

    .venv/bin/python bench/compare.py [--jobs 20] [--burst 200] [--intake 1000]
        [--active 10000] [--parts latency burst intake scale]      (the stack must be up)

Run it under ``flock /tmp/obp-stack.lock`` (the stack is shared); ``make bench`` runs every part.
Each part's figures are kept in build/bench-compare.json with the command and the date that
produced them, so that parts run apart still make one section; a part's ratios always come from
one run of that part.

1. latency: ``--jobs`` jobs of ``true``, then of ``sleep 5``, for each way in turn, a job started
   every 2 s (``true``) or 3 s (``sleep 5``) whatever the previous one's state (at most two
   run at once, the node's two CPUs): seconds from the submission to the completion observed.
   This service polls every 0.1 s here, like the floor.
2. burst: ``--burst`` jobs of ``true`` submitted at once, per way: SSH sessions held on the head
   node (peak), scheduler commands (the way's own count, and the RPCs slurmctld counted for the
   stack's users with ``sdiag``), the CPU of the way's processes. This service polls every 1 s
   (its default) and PSI/J every 30 s (its default).
3. intake: ``--intake`` runs POSTed through the API until every job is queued in Slurm.
4. scale: ``--active`` runs across ten clusters (bench/compare_scale.py): per monitor cycle.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.stack import slurm, stack  # noqa: E402

from bench import compare_report, compare_scale, compare_text  # noqa: E402
from bench.compare_ways import (  # noqa: E402
    Batch,
    head_node,
    legacy,
    now,
    psij_dir,
    run_counted,
    this_service,
)
from bench.worker import DEFAULT_POLL, FAST_POLL, Service  # noqa: E402

RESULTS = REPO / "build" / "bench-compare.json"
DOC = REPO / "docs" / "benchmarks.md"
PARTS = ("latency", "burst", "intake", "scale")
#: The jobs, and the seconds between two submissions in the latency part.
KINDS = {"true": 2.0, "sleep 5": 3.0}
WAYS = ("service", "legacy", "psij", "floor")


def ways(command: str, count: int, stagger: float, poll: float) -> dict[str, Batch]:
    out: dict[str, Batch] = {}
    for way in WAYS:
        print(f"  {way}: {count} x `{command}`, {stagger} s apart", flush=True)
        if way == "service":
            service = Service(poll)  # closed before the next way: its connection is not theirs
            try:
                out[way] = run_counted(lambda s=service: this_service(s, command, count, stagger))
            finally:
                service.close()
        elif way == "legacy":
            out[way] = run_counted(lambda: legacy(command, count, stagger))
        else:
            out[way] = run_counted(lambda w=way: head_node(w, command, count, stagger))
        b = out[way]
        print(
            f"    wall {b.wall:.1f} s, cpu {b.cpu:.2f} s, commands {b.commands}, rpcs {b.rpcs},"
            f" sessions peak {b.sessions_peak}",
            flush=True,
        )
    return out


def check_quiet(wait: float = 0) -> None:
    """The benchmark needs the stack to itself: an empty queue (after up to ``wait`` seconds:
    the jobs of the part before end) and the partition up."""
    deadline = time.monotonic() + wait
    queue = slurm("squeue", "-a", "-h", "-o", "%i").split()
    while queue and time.monotonic() < deadline:
        time.sleep(1)
        queue = slurm("squeue", "-a", "-h", "-o", "%i").split()
    if queue:
        raise SystemExit(f"the stack is busy: {len(queue)} jobs in squeue -a; wait or scancel")
    partition = stack().partition
    state = slurm("sinfo", "-h", "-p", partition, "-o", "%a").strip()
    if state != "up":
        raise SystemExit(f"partition {partition} is {state}: bring it up first")


def measure(part: str, args: argparse.Namespace) -> Any:
    if part == "latency":
        return {
            kind: {
                w: dataclasses.asdict(b)
                for w, b in ways(kind, args.jobs, stagger, FAST_POLL).items()
            }
            for kind, stagger in KINDS.items()
        }
    if part == "burst":
        burst = ways("true", args.burst, 0, DEFAULT_POLL)
        return {w: dataclasses.asdict(b) for w, b in burst.items()}
    if part == "intake":
        return compare_scale.intake(args.intake)
    return compare_scale.ten_clusters(args.active, 10, args.cycles)


def run(args: argparse.Namespace, command: str) -> list[str]:
    saved: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    parts = saved.setdefault("parts", {})
    if args.report:
        return compare_text.section(parts)
    check_quiet()
    psij_dir()
    for part in args.parts:
        print(f"compare: {part}", flush=True)
        started, load = now(), os.getloadavg()[0]
        data = measure(part, args)
        parts[part] = {
            "at": f"{started}-{now()[11:]}",
            "command": command,
            "load": [load, os.getloadavg()[0]],
            "data": data,
        }
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(saved, indent=1))
        check_quiet(wait=60)
    return compare_text.section(parts)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--jobs", type=int, default=20, help="jobs per way and kind (latency)")
    p.add_argument("--burst", type=int, default=200, help="jobs submitted at once per way")
    p.add_argument("--intake", type=int, default=1000, help="runs POSTed until queued")
    p.add_argument("--active", type=int, default=10_000, help="active runs over ten clusters")
    p.add_argument("--cycles", type=int, default=5, help="monitor cycles measured (scale)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    p.add_argument("--no-write", action="store_true", help="print, leave the doc as it is")
    p.add_argument("--report", action="store_true", help="measure nothing: write the kept figures")
    return p


def main() -> int:
    args = parser().parse_args()
    command = ".venv/bin/python bench/compare.py " + shlex.join(sys.argv[1:])
    lines = run(args, command.strip())
    if not args.no_write:
        compare_report.write_section(lines, DOC)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
