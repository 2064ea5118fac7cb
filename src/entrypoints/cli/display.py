"""How the client commands show what the API answered: rich tables and the live view of
``watch``. Imported by the client commands only (the service never loads rich)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from .steps import current_step, duration, elapsed, job_text, last_reason, steps

_STATE_STYLE = {
    "DONE": "bold green",
    "FAILED": "bold red",
    "CANCELLED": "yellow",
    "CANCELLING": "yellow",
    "RUNNING": "bold cyan",
}
_STEP_MARK = {
    "done": ("✓", "green"),
    "pending": ("·", "dim"),
    "failed": ("✗", "bold red"),
    "cancelled": ("■", "yellow"),
    "cancelling": ("■", "yellow"),
}


def console() -> Console:
    """A console on stdout; off a terminal, wide enough that ids are never wrapped."""
    wide = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=200 if wide else None, highlight=False)


def when(text: str | None) -> str:
    if not text:
        return ""
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def state(name: str, stale: bool = False) -> Text:
    label = Text(name, style=_STATE_STYLE.get(name, ""))
    if stale:
        label.append(" (stale)", style="yellow")
    return label


def runs_table(runs: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("run id", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("name")
    table.add_column("created", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    table.add_column("last reason")
    for run in runs:
        table.add_row(
            run["run_id"],
            state(run["state"], bool(run.get("stale"))),
            run.get("name") or "",
            when(run["created_at"]),
            when(run["updated_at"]),
            run.get("last_reason") or run.get("failure_reason") or "",
        )
    return table


def run_details(run: Mapping[str, Any]) -> RenderableType:
    """The run's facts, then its timeline."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column()
    request = run.get("request") or {}
    facts.add_row("run", run["run_id"])
    facts.add_row("state", state(run["state"], bool(run.get("stale"))))
    if run.get("stale"):
        stale = run["stale"]
        facts.add_row("stale", f"since {when(stale['since'])}: {stale['reason']}")
    facts.add_row("what", request.get("name") or request.get("kind") or "")
    facts.add_row("requested by", (run.get("requested_by") or {}).get("username") or "")
    facts.add_row("created", when(run["created_at"]))
    facts.add_row("updated", when(run["updated_at"]))
    facts.add_row("job", job_text(run))
    if run.get("scheduler_raw"):
        facts.add_row("scheduler", run["scheduler_raw"])
    if run.get("failure_reason"):
        facts.add_row("failure", Text(run["failure_reason"], style="red"))
    if run.get("cancelled_by"):
        facts.add_row("cancelled by", run["cancelled_by"])
    sync = run.get("sync") or {}
    if sync.get("kind") or sync.get("outcome") == "confirmed":
        files = len(sync.get("files") or ())
        facts.add_row("sync", f"{sync.get('kind') or ''} {sync.get('outcome')}, {files} files")
    graph = run.get("knowledge_graph") or {}
    if graph.get("activity_id"):
        facts.add_row("provenance", graph["activity_id"])
    return Group(facts, Text(), timeline_table(run.get("timeline") or ()))


def timeline_table(timeline: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title="timeline", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("#", justify="right")
    table.add_column("at", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("reason")
    for entry in timeline:
        moved = entry.get("from_state") not in (None, entry["to_state"])
        label = (
            Text(f"{entry['from_state']} → ").append_text(state(entry["to_state"]))
            if moved
            else state(entry["to_state"])
        )
        table.add_row(
            str(entry["version"]), when(entry["at"]), label, entry["kind"], entry["reason"]
        )
    return table


def watch_view(run: Mapping[str, Any], now: datetime, note: str = "") -> RenderableType:
    """The live view: the pipeline's steps, the job, the time so far and the last reason."""
    head = Text.assemble(
        ("run ", "bold"),
        (run["run_id"], "bold"),
        "  ",
        state(run["state"], bool(run.get("stale"))),
        f"  {duration(elapsed(run, now))}",
    )
    table = Table(box=None, show_header=False, padding=(0, 1))
    table.add_column(width=2)
    table.add_column(no_wrap=True)
    table.add_column()
    current = current_step(run)
    for step in steps(run):
        if step.status == "current":
            mark: RenderableType = Spinner("dots", style="cyan")
            detail = job_text(run) if step.name in ("Submit", "AwaitJob") else ""
            if step.name in ("Sync", "AwaitSync") and run.get("sync", {}).get("kind"):
                detail = f"by {run['sync']['kind']}"
        else:
            glyph, style = _STEP_MARK[step.status]
            mark, detail = Text(glyph, style=style), ""
        name = Text(step.name, style="bold" if step.name == current else "")
        table.add_row(mark, name, Text(detail, style="dim"))
    lines: list[RenderableType] = [head, table, Text(f"job: {job_text(run)}")]
    lines.append(Text(f"last: {last_reason(run)}", style="italic"))
    if note:
        lines.append(Text(note, style="yellow"))
    return Group(*lines)


def change_line(entry: Mapping[str, Any]) -> str:
    """One change of a run, for output that is not a terminal."""
    return f"{when(entry['at'])}  {entry['to_state']:<12} {entry['reason']}"


def outputs_table(files: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("path")
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("digest", overflow="fold")
    table.add_column("location", overflow="fold")
    for f in files:
        table.add_row(f["path"], _size(f["size"]), f.get("digest") or "", f["location"])
    return table


def provenance_view(doc: Mapping[str, Any]) -> RenderableType:
    """The activity in a few lines, and one row per entity."""
    activity = doc.get("activity") or {}
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")
    facts.add_row("activity", doc["activity_id"])
    facts.add_row("revision", str(doc["revision"]))
    if doc.get("withdrawn"):
        facts.add_row("withdrawn", Text("yes (the run was cancelled)", style="yellow"))
    for key, value in activity.items():
        if key.startswith("_") or key in ("@id", "@context", "generated"):
            continue
        shown = _brief(value)
        if shown:
            facts.add_row(key, shown)
    entities = Table(title="entities", title_justify="left", box=box.SIMPLE_HEAD)
    entities.add_column("id", overflow="fold")
    entities.add_column("path")
    entities.add_column("size", justify="right", no_wrap=True)
    entities.add_column("location", overflow="fold")
    for entity in doc.get("entities") or ():
        size = _find(entity, ("distribution", "contentSize", "value"), ("size",))
        location = _find(
            entity,
            ("distribution", "atLocation", "location"),
            ("distribution", "contentUrl"),
            ("atLocation",),
            ("location",),
        )
        entities.add_row(
            str(entity.get("@id", "")),
            str(entity.get("relativePath") or entity.get("name") or ""),
            _size(size) if isinstance(size, int) else "",
            str(location or ""),
        )
    return Group(facts, Text(), entities)


def _find(doc: Mapping[str, Any], *paths: tuple[str, ...]) -> Any:
    for path in paths:
        value: Any = doc
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if value is not None:
            return value
    return None


def _brief(value: Any) -> str:
    """A value of the activity in a few words: scalars as they are, a list of scalars joined,
    a node by its name; anything else is left to ``--json``."""
    if isinstance(value, Mapping):
        name = value.get("name")
        return name if isinstance(name, str) else ""
    if isinstance(value, list):
        if all(isinstance(v, str | int | float) for v in value):
            return ", ".join(str(v) for v in value)
        return ""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover
