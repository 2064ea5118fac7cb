"""The client commands about what a run made: ``log``, ``outputs`` and ``provenance``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from .errors import USAGE, CommandError
from .options import add_interval, client_command

if TYPE_CHECKING:
    from .client import ApiClient

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

#: What ``log`` asks for by default (the API serves at most ``OBP_MAX_LOG_BYTES``).
DEFAULT_LOG_BYTES = 65536


def register(sub: Subparsers) -> None:
    log = client_command(sub, "log", "print the end of a run's job log", _log)
    log.add_argument("run", metavar="RUN", help="the run's id")
    log.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing what the log gains until the run ends",
    )
    log.add_argument(
        "--max-bytes",
        type=int,
        default=DEFAULT_LOG_BYTES,
        help=f"ask for at most this end of the log ({DEFAULT_LOG_BYTES})",
    )
    add_interval(log)

    outputs = client_command(sub, "outputs", "list a run's synchronised outputs", _outputs)
    outputs.add_argument("run", metavar="RUN", help="the run's id")

    provenance = client_command(
        sub, "provenance", "show what the knowledge graph holds of a run", _provenance
    )
    provenance.add_argument("run", metavar="RUN", help="the run's id")


# ================================================================ log


def new_text(seen: str, text: str) -> tuple[str, bool]:
    """What ``text`` (the end of the log now) adds to ``seen`` (its end before), and whether
    some of the log between the two was never seen (it grew by more than one window).

    The longest end of ``seen`` that ``text`` starts with is the part both windows share
    (a KMP prefix function over ``text + NUL + seen``: linear in their sizes)."""
    if text.startswith(seen):  # the log grew within the window (or did not change)
        return text[len(seen) :], False
    joined = text + "\0" + seen
    prefix = [0] * len(joined)
    for i in range(1, len(joined)):
        k = prefix[i - 1]
        while k and joined[i] != joined[k]:
            k = prefix[k - 1]
        if joined[i] == joined[k]:
            k += 1
        prefix[i] = k
    shared = prefix[-1]
    if shared == 0 and text:
        return text, True
    return text[shared:], False


def _log(args: argparse.Namespace) -> int:
    if not 1 <= args.max_bytes <= 16 * 1024 * 1024:
        raise CommandError("--max-bytes must be between 1 and 16777216", USAGE)
    from .client import client_for

    with client_for(args) as api:
        if not args.follow:
            answer = api.get(api.target.run_path(args.run, "log"), {"max_bytes": args.max_bytes})
            if args.json:
                _print_json(answer.text)
            else:
                sys.stdout.write(answer.data["text"])
                sys.stdout.flush()
            return 0
        _follow(api, args.run, args.max_bytes, args.interval, args.json)
    return 0


def _follow(api: ApiClient, run_id: str, max_bytes: int, interval: float, as_json: bool) -> None:
    """Print what the log gains until the run ends (the log read once more after that)."""
    seen = ""
    log_path, run_path = api.target.run_path(run_id, "log"), api.target.run_path(run_id)
    while True:
        ended = api.get(run_path).data["terminal"]
        answer = api.get(log_path, {"max_bytes": max_bytes})
        text = answer.data["text"]
        if as_json:
            if text != seen:
                _print_json(answer.text)
        else:
            added, gap = new_text(seen, text)
            if gap:
                sys.stdout.write("[... more of the log than --max-bytes went by ...]\n")
            sys.stdout.write(added)
            sys.stdout.flush()
        seen = text
        if ended:
            return
        time.sleep(interval)


# ================================================================ outputs and provenance


def _outputs(args: argparse.Namespace) -> int:
    from .client import client_for

    with client_for(args) as api:
        answer = api.get(api.target.run_path(args.run, "outputs"))
    if args.json:
        _print_json(answer.text)
        return 0
    from .display import console, outputs_table

    doc = answer.data
    out = console()
    if doc["synced"]:
        out.print(outputs_table(doc["files"]) if doc["files"] else "the run has no outputs")
    elif doc["state"] in ("FAILED", "CANCELLED"):
        out.print(f"the run ended {doc['state']} without synchronised outputs")
    else:
        out.print(f"no synchronised outputs yet (the run is {doc['state']})")
    return 0


def _provenance(args: argparse.Namespace) -> int:
    from .client import client_for

    with client_for(args) as api:
        answer = api.get(api.target.run_path(args.run, "provenance"))
    if args.json:
        _print_json(answer.text)
        return 0
    from .display import console, provenance_view

    console().print(provenance_view(answer.data))
    return 0


def _print_json(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
