"""``obp-workflow watch RUN``: the run's pipeline, live, until the run ends.

On a terminal, a live view (the steps, the job, the time so far, the last reason) redrawn at
each poll; otherwise one line per change of the run. Exits 0 when the run is DONE, 1 when it
ended FAILED or CANCELLED. The API unavailable or unreachable for a while is waited out (and
said on the view); for longer than ``PATIENCE`` seconds it is the command's error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import OK, RUN_NOT_DONE, CommandError
from .options import add_interval, client_command

if TYPE_CHECKING:
    from .client import ApiClient

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

#: How long the API may stay unavailable or unreachable before ``watch`` gives up.
PATIENCE = 60.0


def register(sub: Subparsers) -> None:
    watch = client_command(
        sub,
        "watch",
        "follow a run's pipeline until it ends (exit 0 DONE, 1 FAILED or CANCELLED)",
        _watch,
    )
    watch.add_argument("run", metavar="RUN", help="the run's id")
    add_interval(watch)


def _watch(args: argparse.Namespace) -> int:
    from .client import client_for

    with client_for(args) as api:
        return watch_run(api, args.run, interval=args.interval, as_json=args.json)


def watch_run(api: ApiClient, run_id: str, *, interval: float, as_json: bool) -> int:
    poll = Poller(api, run_id)
    if as_json:
        return _as_json_lines(poll, interval)
    if sys.stdout.isatty():
        return _live(poll, interval)
    return _as_lines(poll, interval)


class Poller:
    """GETs the run; a transient failure is remembered (and raised once it lasts too long)."""

    def __init__(self, api: ApiClient, run_id: str) -> None:
        self.api = api
        self.path = api.target.run_path(run_id)
        self.failing_since: float | None = None
        self.problem = ""
        self.text = ""

    def __call__(self) -> Mapping[str, Any] | None:
        """The run, or None when this poll failed in a way worth waiting out."""
        try:
            answer = self.api.get(self.path)
        except CommandError as exc:
            if not exc.transient:
                raise
            now = time.monotonic()
            self.failing_since = self.failing_since or now
            if now - self.failing_since > PATIENCE:
                raise
            self.problem = exc.message
            return None
        self.failing_since, self.problem, self.text = None, "", answer.text
        data: Mapping[str, Any] = answer.data
        return data


def _outcome(run: Mapping[str, Any]) -> int:
    return OK if run["state"] == "DONE" else RUN_NOT_DONE


def _until_ended(
    poll: Poller, interval: float, show: Callable[[Mapping[str, Any] | None], None]
) -> int:
    while True:
        run = poll()
        show(run)
        if run is not None and run["terminal"]:
            return _outcome(run)
        time.sleep(interval)


def _live(poll: Poller, interval: float) -> int:
    from rich.live import Live

    from .display import console, watch_view

    last: list[Mapping[str, Any]] = []
    out = console()
    with Live(console=out, refresh_per_second=8, transient=False) as live:

        def show(run: Mapping[str, Any] | None) -> None:
            if run is not None:
                last[:] = [run]
            if last:
                note = f"the API does not answer: {poll.problem}" if poll.problem else ""
                live.update(watch_view(last[0], datetime.now(UTC), note), refresh=True)

        return _until_ended(poll, interval, show)


def _as_lines(poll: Poller, interval: float) -> int:
    """One line per change of the run (its timeline), then how it ended."""
    from .display import change_line
    from .steps import duration, elapsed

    printed = 0
    said = ""

    def show(run: Mapping[str, Any] | None) -> None:
        nonlocal printed, said
        if run is None:
            if poll.problem != said:
                print(f"waiting: the API does not answer: {poll.problem}", flush=True)
                said = poll.problem
            return
        said = ""
        timeline = run.get("timeline") or []
        for entry in timeline[printed:]:
            print(change_line(entry), flush=True)
        printed = len(timeline)
        if run["terminal"]:
            spent = duration(elapsed(run, datetime.now(UTC)))
            print(f"run {run['run_id']} ended {run['state']} after {spent}", flush=True)

    return _until_ended(poll, interval, show)


def _as_json_lines(poll: Poller, interval: float) -> int:
    """The run's JSON, one line each time it changed."""
    version = -1

    def show(run: Mapping[str, Any] | None) -> None:
        nonlocal version
        if run is not None and run["version"] != version:
            version = run["version"]
            text = poll.text.strip()
            line = text if "\n" not in text else json.dumps(run, separators=(",", ":"))
            print(line, flush=True)

    return _until_ended(poll, interval, show)
