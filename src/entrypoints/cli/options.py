"""The options every client command shares: where the API is, who calls it, in which project,
and ``--json``."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

#: How often the waiting commands (``watch``, ``log --follow``) ask the API, by default.
DEFAULT_INTERVAL = 0.5


def _shared() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    where = shared.add_argument_group("the API and the project")
    where.add_argument("--url", help="the API's base URL (default: OBP_API_URL)")
    where.add_argument("--token", help="bearer token (default: OBP_TOKEN)")
    where.add_argument("--vlab", help="Virtual Lab id (default: OBP_VIRTUAL_LAB_ID)")
    where.add_argument("--project", help="project id (default: OBP_PROJECT_ID)")
    where.add_argument(
        "--timeout",
        type=_positive,
        default=30.0,
        help="seconds to wait for each answer of the API (30)",
    )
    shared.add_argument(
        "--json", action="store_true", help="print the API's JSON as it answered (for scripts)"
    )
    return shared


def client_command(
    sub: Subparsers, name: str, help: str, run: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """A client command's parser, with the shared options; ``run`` runs it."""
    parser = sub.add_parser(name, help=help, description=help, parents=[_shared()])
    parser.set_defaults(handler=functools.partial(_interruptible, run))
    return parser


def _interruptible(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Ctrl-C ends a client command quietly, with the shell's code for it."""
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


def add_interval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--interval",
        type=_positive,
        default=DEFAULT_INTERVAL,
        metavar="SECONDS",
        help=f"how often to ask the API ({DEFAULT_INTERVAL})",
    )


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3600: {text}")
    return value
