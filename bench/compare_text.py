"""The words of the side-by-side section (bench/compare_report.py renders the tables)."""

from __future__ import annotations

import statistics
from typing import Any

from bench.compare_report import SECTION, _ratio, burst_table, latency_table, machine

HOW = [
    "`bench/compare.py` (part of `make bench`), on the test stack; each part's figures come "
    "from one run of that part, whose date and command head it. The ways:",
    "",
    "- **this service**: the local gateway (real HTTP, the API handler) and the worker (a "
    "thread, with luigid's scheduler and server in its process) in one process "
    "(`bench/worker.py`'s `Service`), in-memory runs, the stack's Slurm over one pooled SSH "
    "connection (`SlurmClusterGateway`); jobs without outputs (a direct upload of nothing), "
    "registration in the local graph (SQLite). Its latency is from the POST to the job's "
    "completion observed on the run (the SYNCING event), and to DONE. Its CPU: every thread of "
    "the worker (its builds, monitor, SSH transport and luigid's server), not the gateway's "
    "threads (a Lambda in production);",
    "- **previous generation**: per job a new OpenSSH client process "
    "(`ssh -i key -p 2222 -o UserKnownHostsFile=...`) running `sbatch --wait`, so one SSH "
    "session is held per job until it ends; latency until the `ssh` process exits; CPU of the "
    "`ssh` processes;",
    "- **PSI/J**: `psij-python`'s Slurm executor with its default configuration (first queue "
    "poll 2 s after the executor starts, then every 30 s; `sbatch` to submit, one `squeue` for "
    "all its jobs per poll), run on the head node (this machine) as the stack's user with the "
    "head node's Python (`bench/headnode.py psij` under `runuser`; PSI/J installed for it into "
    "a folder of its own, the version the dev extra pins); latency until its status callback "
    "says COMPLETED; CPU of its process and of the commands it ran;",
    "- **floor**: `sbatch` on the head node as the stack's user, then `squeue` every 0.1 s until "
    "the job has left the queue or shows completed (`bench/headnode.py floor`).",
    "",
    "Scheduler load is measured for every way alike with slurmctld's own counters: the RPCs "
    "`sdiag` counts for the stack's two users, before and after (`squeue` and `sbatch` cost a "
    "few RPCs each, `sbatch --wait` polls the job itself; `sacct`, which this service runs to "
    "register a run, goes to slurmdbd and is not counted there). SSH sessions: TCP connections "
    "established to the head node's port 2222, sampled every 0.1 s.",
]


def _head(part: dict[str, Any], title: str) -> list[str]:
    load = part.get("load")
    said = (
        f" Load average (1 min): {load[0]:.2f} when it started, {load[1]:.2f} when it ended "
        "(the machine's two cores are shared)."
        if load
        else ""
    )
    return [f"### {title}", "", f"Measured {part['at']} UTC with `{part['command']}`.{said}", ""]


def latency(part: dict[str, Any]) -> list[str]:
    lines = _head(part, "One job after another")
    lines += [
        "A job started every 2 s (`true`) or 3 s (`sleep 5`) whatever the previous one's "
        "state, so at most two run at once (the node's two CPUs); this service polls every "
        "0.1 s, like the floor.",
        "",
    ]
    for kind, batches in part["data"].items():
        lines += latency_table(kind, batches)
    return lines


def burst(part: dict[str, Any]) -> list[str]:
    count = len(part["data"]["floor"]["latencies"])
    return [
        *_head(part, f"{count} jobs of `true` submitted at once"),
        "Each way submits its jobs back to back and waits for all of them; this service polls "
        "every 1 s (its default), PSI/J every 30 s (its default). Commands run: this service's "
        "pool (`commands_sent`: sbatch, squeue, sacct, file writes), the previous generation's "
        "`ssh` processes, PSI/J's and the floor's `sbatch`/`squeue` processes.",
        "",
        *burst_table(part["data"]),
    ]


def intake(part: dict[str, Any]) -> list[str]:
    d = part["data"]
    return [
        *_head(part, f"{int(d['count']):,} runs through the API until queued in Slurm"),
        f"{int(d['count']):,} POSTs back to back through the local gateway, the partition down, "
        f"until every run is QUEUED (its job PENDING in Slurm): {d['intake']:.1f} s (target "
        f"under 60 s: {'met' if d['intake'] < 60 else 'not met'}); API p50 "
        f"{d['api_p50'] * 1000:.1f} ms, p99 {d['api_p99'] * 1000:.1f} ms meanwhile. The jobs "
        "are cancelled after.",
        "",
    ]


def scale(part: dict[str, Any]) -> list[str]:
    d = part["data"]
    rows = d["cycles"]
    per = d["total"] // d["clusters"]
    lines = _head(part, f"{d['total']:,} active runs across {d['clusters']} clusters")
    lines += [
        f"The clusters are {d['clusters']} SSH endpoints over the one Slurm: "
        f"{d['clusters']} `ClusterHandle`s with distinct names, all pointing at 127.0.0.1:2222 "
        "as the stack's user; the pool keeps one connection per endpoint, so the service holds "
        f"{d['clusters']} SSH connections (peak seen: {d['sessions_peak']}). {d['clusters']} "
        f"projects, each with its cluster and {per:,} runs whose jobs are held "
        f"(`sbatch --hold`, submitted in {d['submit_seconds']:.0f} s). A poll of more than 50 "
        "jobs asks `squeue` for the user's jobs, and the ten endpoints share one user here: "
        f"each cluster's `squeue` returns all {d['total']:,} lines, {d['clusters']} times what "
        "one real cluster of them would. Slurm's `MaxJobCount` on the stack: "
        f"{d['max_job_count']:,} (enough; unchanged). Each row is one monitor cycle "
        "(`monitor_cycle`) after a first one that connects; CPU is the benchmark process's "
        "(`time.process_time`), RSS its resident memory after the cycle "
        f"({d['rss_before_runs']:.0f} MiB before the runs were made; peak "
        f"{d['rss_peak']:.0f} MiB).",
        "",
        "| cycle | scheduler commands | slurmctld RPCs | wall (ms) | service CPU (ms) | "
        "RSS (MiB) |",
        "|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {i + 1} | {r['commands']} | {r['rpcs']} | {r['wall'] * 1000:.0f} | "
            f"{r['cpu'] * 1000:.0f} | {r['rss']:.0f} |"
            for i, r in enumerate(rows)
        ),
        "",
    ]
    return lines


def targets(lat: dict[str, Any], burst_data: dict[str, Any]) -> list[str]:
    one = lat["true"]
    ours = statistics.median(one["service"]["latencies"])
    floor = statistics.median(one["floor"]["latencies"])
    done = statistics.median(one["service"]["done"])
    ours_b, old = burst_data["service"], burst_data["legacy"]
    cpu = old["cpu"] / ours_b["cpu"] if ours_b["cpu"] else float("inf")
    rpcs = old["rpcs"] / ours_b["rpcs"] if ours_b["rpcs"] else float("inf")
    sessions = old["sessions_peak"] / max(1, ours_b["sessions_peak"])
    n = len(old["latencies"])

    def met(ok: bool) -> str:
        return "met" if ok else "not met"

    return [
        "### Against the targets",
        "",
        f"- Overhead per run at {n} concurrent jobs, at least 5x below the previous "
        "generation's way (its figure / this service's): CPU per run "
        f"{old['cpu'] / n * 1000:.1f} ms against {ours_b['cpu'] / n * 1000:.1f} ms, "
        f"{_ratio(old['cpu'], ours_b['cpu'])} ({met(cpu >= 5)}); slurmctld RPCs per run "
        f"{old['rpcs'] / n:.1f} against {ours_b['rpcs'] / n:.1f}, "
        f"{_ratio(old['rpcs'], ours_b['rpcs'])} ({met(rpcs >= 5)}); SSH sessions held at peak "
        f"{old['sessions_peak']} against {ours_b['sessions_peak']}, {sessions:.0f}x "
        f"({met(sessions >= 5)}).",
        f"- One `true` job at median within 0.5 s of the floor: the completion is observed on "
        f"the run {ours - floor:+.2f} s from the floor's median ({ours:.2f} s against "
        f"{floor:.2f} s: {met(ours - floor <= 0.5)}); DONE, registration included, at "
        f"{done:.2f} s ({done - floor:+.2f} s).",
        "",
    ]


def section(parts: dict[str, Any]) -> list[str]:
    lines = [SECTION, "", f"Machine: {machine()}.", "", *HOW, ""]
    for name, render in (
        ("latency", latency),
        ("burst", burst),
        ("intake", intake),
        ("scale", scale),
    ):
        if name in parts:
            lines += render(parts[name])
    if "latency" in parts and "burst" in parts:
        lines += targets(parts["latency"]["data"], parts["burst"]["data"])
    return lines
