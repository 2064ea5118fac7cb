"""The side-by-side section of docs/benchmarks.md, from the figures bench/compare.py kept."""

from __future__ import annotations

import os
import statistics
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.worker import percentile

SECTION = "## Side by side: this service, the previous generation's way, PSI/J, the floor"
NAMES = {
    "service": "this service (POST -> completion observed on the run)",
    "service_done": "this service (POST -> DONE)",
    "service_queued": "this service (POST -> job submitted: QUEUED)",
    "legacy": "previous generation: `ssh` process + `sbatch --wait` per job",
    "psij": "PSI/J Slurm executor, default polling",
    "floor": "floor: `sbatch`, `squeue` every 0.1 s",
}


def _version(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB; {_version(['sinfo', '--version'])}; "
        f"{_version(['ssh', '-V'])}; psij-python {metadata.version('psij-python')} on the head "
        f"node's {_version(['/usr/bin/python3', '--version'])}; the test stack on loopback"
    )


def _med(values: Sequence[float]) -> float:
    return statistics.median(values)


def _p95(values: Sequence[float]) -> float:
    return percentile(values, 95)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 else "-"


def latency_table(kind: str, batches: dict[str, Any]) -> list[str]:
    rows = {w: b["latencies"] for w, b in batches.items()}
    ours_b = batches["service"]
    queued = {"service_queued": ours_b["queued"]} if ours_b.get("queued") else {}
    rows = {**queued, "service": rows["service"], "service_done": ours_b["done"], **rows}
    ours, floor = _med(rows["service"]), _med(rows["floor"])
    count = len(rows["floor"])
    lines = [
        f"#### `{kind}`, {count} jobs per way",
        "",
        "| way | median (s) | p95 (s) | median over the floor's (s) | median / this "
        "service's | slurmctld RPCs per job | SSH sessions, peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for way, values in rows.items():
        batch = batches["service" if way.startswith("service") else way]
        partial = way == "service_queued"  # a step, not a whole job: no comparison
        over = "-" if partial else f"{_med(values) - floor:+.2f}"
        lines.append(
            f"| {NAMES[way]} | {_med(values):.2f} | {_p95(values):.2f} | "
            f"{over} | {'-' if partial else _ratio(_med(values), ours)} | "
            f"{batch['rpcs'] / count:.1f} | {batch['sessions_peak']} |"
        )
    return [*lines, "", *notes(batches)]


def burst_table(batches: dict[str, Any]) -> list[str]:
    count = len(batches["floor"]["latencies"])
    ours = batches["service"]
    lines = [
        "| way | all observed after (s) | latency median / p95 (s) | SSH sessions, peak "
        "(mean) | commands run | slurmctld RPCs | CPU (s) | CPU per run (ms) | RPCs per run | "
        "CPU per run / this service's | RPCs per run / this service's |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for way in ("service", "legacy", "psij", "floor"):
        b = batches[way]
        lines.append(
            f"| {NAMES[way]} | {b['wall']:.1f} | {_med(b['latencies']):.2f} / "
            f"{_p95(b['latencies']):.2f} | {b['sessions_peak']} ({b['sessions_mean']:.1f}) | "
            f"{b['commands']} | {b['rpcs']} | {b['cpu']:.2f} | {b['cpu'] / count * 1000:.1f} | "
            f"{b['rpcs'] / count:.1f} | {_ratio(b['cpu'], ours['cpu'])} | "
            f"{_ratio(b['rpcs'], ours['rpcs'])} |"
        )
    done = ours["done"]
    lines += [
        "",
        f"This service's runs reached DONE at {_med(done):.2f} s median, {_p95(done):.2f} s p95 "
        "(registration included)"
        + (
            f"; of its {ours['cpu']:.2f} s of CPU, luigid's server thread used "
            f"{ours['luigid_cpu']:.2f} s (the builds' scheduler calls are in the build threads)."
            if "luigid_cpu" in ours
            else "."
        ),
        "",
        *notes(batches),
    ]
    return lines


def notes(batches: dict[str, Any]) -> list[str]:
    said = [f"{NAMES[w]}: {n}" for w, b in batches.items() for n in b.get("notes", [])]
    return [f"Notes: {'; '.join(said)}.", ""] if said else []


def write_section(lines: list[str], path: Path) -> None:
    """Replace the section in ``path`` (up to the next ``## `` heading), keeping the rest; a
    new section goes before the Lambda handlers' one."""
    text = path.read_text()
    body = "\n".join(lines).rstrip("\n") + "\n"
    start = text.find(SECTION)
    if start >= 0:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + ("" if end < 0 else "\n" + text[end + 1 :])
    else:
        at = text.find("\n## The Lambda handlers")
        at = len(text) if at < 0 else at + 1
        text = text[:at].rstrip("\n") + "\n\n" + body + "\n" + text[at:]
    path.write_text(text)
    print(f"written {path}")
