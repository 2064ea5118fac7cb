"""The client commands about runs: ``submit``, ``list``, ``status`` and ``cancel``."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import USAGE, CommandError
from .options import add_interval, client_command

if TYPE_CHECKING:
    from .client import Answer

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(sub: Subparsers) -> None:
    submit = client_command(
        sub,
        "submit",
        "submit a run: a request body (JSON file, '-' for stdin) and/or flags; prints its id",
        _submit,
    )
    submit.add_argument("file", nargs="?", metavar="FILE.json", help="the run request body")
    body = submit.add_argument_group("the request (each flag overrides FILE's value)")
    body.add_argument(
        "--command",
        help="the command line, split into words as a shell would (never run by a shell)",
    )
    body.add_argument("--name", help="a name for the run")
    body.add_argument("--kind", choices=("simulation", "emodel-fitting", "job"))
    body.add_argument("--nodes", type=int)
    body.add_argument("--tasks-per-node", type=int)
    body.add_argument("--cpus-per-task", type=int)
    body.add_argument("--memory-mb", type=int)
    body.add_argument("--time-limit", type=int, metavar="MINUTES")
    body.add_argument("--partition")
    body.add_argument("--account")
    body.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="PATH",
        help="an output to bring back, relative to the run folder (repeatable)",
    )
    submit.add_argument(
        "--idempotency-key", help="repeat the submission safely: same key, same run"
    )
    submit.add_argument("--watch", action="store_true", help="then watch the run until it ends")
    add_interval(submit)

    listing = client_command(sub, "list", "list the project's runs, newest first", _list)
    listing.add_argument(
        "--state",
        action="append",
        default=[],
        help="only runs in this state (repeatable, or comma-separated)",
    )
    listing.add_argument("--limit", type=int, default=50, help="runs per page (50)")
    listing.add_argument("--cursor", help="the next page's cursor, as a listing printed it")
    listing.add_argument(
        "--all", action="store_true", help="follow the pages to the end (not with --json)"
    )

    status = client_command(sub, "status", "show a run and its timeline", _status)
    status.add_argument("run", metavar="RUN", help="the run's id")

    cancel = client_command(sub, "cancel", "cancel a run", _cancel)
    cancel.add_argument("run", metavar="RUN", help="the run's id")
    cancel.add_argument("--reason", default="", help="why (kept in the run's timeline)")


# ================================================================ submit


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request: FILE's body, with what the flags say over it."""
    body: dict[str, Any] = {}
    if args.file is not None:
        body = _read_body(args.file)
    elif args.command is None:
        raise CommandError("give the request as FILE.json, or at least --command", USAGE)
    if args.command is not None:
        try:
            words = shlex.split(args.command)
        except ValueError as exc:
            raise CommandError(f"--command cannot be split into words: {exc}", USAGE) from None
        if not words:
            raise CommandError("--command is empty", USAGE)
        body["command"] = words
    for flag, key in (("name", "name"), ("kind", "kind")):
        if getattr(args, flag) is not None:
            body[key] = getattr(args, flag)
    resources = {
        key: getattr(args, flag)
        for flag, key in (
            ("nodes", "nodes"),
            ("tasks_per_node", "tasks_per_node"),
            ("cpus_per_task", "cpus_per_task"),
            ("memory_mb", "memory_mb"),
            ("time_limit", "time_limit_minutes"),
            ("partition", "partition"),
            ("account", "account"),
        )
        if getattr(args, flag) is not None
    }
    if resources:
        given = body.get("resources")
        body["resources"] = {**(given if isinstance(given, dict) else {}), **resources}
    if args.output:
        given_outputs = body.get("outputs")
        body["outputs"] = [
            *(given_outputs if isinstance(given_outputs, list) else []),
            *args.output,
        ]
    return body


def _read_body(name: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise CommandError(f"cannot read {name}: {reason}", USAGE) from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"{name} is not JSON: {exc}", USAGE) from None
    if not isinstance(body, dict):
        raise CommandError(f"{name} must hold a JSON object (the run request)", USAGE)
    return body


def _submit(args: argparse.Namespace) -> int:
    body = request_body(args)
    from .client import client_for

    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    with client_for(args) as api:
        answer = api.post(api.target.runs_path, body, headers)
        run_id = answer.data["run_id"]
        if args.json:
            print_json(answer)
        else:
            print(run_id, flush=True)
        if not args.watch:
            return 0
        from .watch import watch_run

        return watch_run(api, run_id, interval=args.interval, as_json=args.json)


# ================================================================ list, status, cancel


def _list(args: argparse.Namespace) -> int:
    if args.all and args.json:
        raise CommandError("--all prints tables; with --json, follow next_cursor", USAGE)
    if not 1 <= args.limit <= 500:
        raise CommandError("--limit must be between 1 and 500", USAGE)
    from .client import client_for

    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["state"] = ",".join(s.strip().upper() for s in args.state)
    cursor = args.cursor
    with client_for(args) as api:
        answer = api.get(api.target.runs_path, {**params, "cursor": cursor} if cursor else params)
        if args.json:
            print_json(answer)
            return 0
        runs = list(answer.data["runs"])
        cursor = answer.data.get("next_cursor")
        while args.all and cursor:
            answer = api.get(api.target.runs_path, {**params, "cursor": cursor})
            runs.extend(answer.data["runs"])
            cursor = answer.data.get("next_cursor")
    from .display import console, runs_table

    out = console()
    if not runs:
        out.print("no runs")
    else:
        out.print(runs_table(runs))
    if cursor:
        out.print(f"more: --cursor {cursor}", soft_wrap=True)
    return 0


def _status(args: argparse.Namespace) -> int:
    from .client import client_for

    with client_for(args) as api:
        answer = api.get(api.target.run_path(args.run))
    if args.json:
        print_json(answer)
        return 0
    from .display import console, run_details

    console().print(run_details(answer.data))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from .client import client_for

    with client_for(args) as api:
        body = {"reason": args.reason} if args.reason else None
        answer = api.post(api.target.run_path(args.run, "cancel"), body)
    if args.json:
        print_json(answer)
        return 0
    state = answer.data["state"]
    note = " (the job is being stopped)" if state == "CANCELLING" else ""
    print(f"{answer.data['run_id']}: {state}{note}")
    return 0


def print_json(answer: Answer) -> None:
    """The API's JSON as it answered, ending with a newline."""
    sys.stdout.write(answer.text if answer.text.endswith("\n") else answer.text + "\n")
    sys.stdout.flush()
