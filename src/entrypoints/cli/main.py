"""The command line, ``obp-workflow``: one parser, each command's arguments declared by the
module that runs it; each command imports what it needs when it runs.

The service's own commands (``service.py``): ``demo``, ``serve``, ``openapi``, ``worker``. The
client commands speak HTTP to the REST API at ``OBP_API_URL`` with the bearer token
``OBP_TOKEN``, in the project ``OBP_VIRTUAL_LAB_ID``/``OBP_PROJECT_ID`` (or ``--url``,
``--token``, ``--vlab``, ``--project``): ``submit``, ``list``, ``status``, ``cancel``
(``runs.py``), ``watch`` (``watch.py``), ``log``, ``outputs``, ``provenance`` (``results.py``).
``token`` (``token.py``) prints an access token of the local realm, for ``OBP_TOKEN``.

Exit codes: 0 done; 1 the watched run ended FAILED or CANCELLED; 2 wrong usage or settings;
3 the API answered with an error; 4 the API could not be reached.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import results, runs, service, token, watch
from .errors import CommandError

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]

#: Every module that adds subcommands, in the order of ``--help``. Each ``register(sub)`` adds
#: its commands with ``set_defaults(handler=...)``: a function of the parsed arguments that returns
#: the exit code. A new command: a module with ``register``, and a line here.
REGISTRARS: tuple[Registrar, ...] = (
    service.register,
    runs.register,
    watch.register,
    results.register,
    token.register,
)


DESCRIPTION = """\
The Workflow Service of the Open Brain Platform.

The client commands (submit ... provenance) speak to the REST API at OBP_API_URL with the bearer
token OBP_TOKEN, in the project OBP_VIRTUAL_LAB_ID/OBP_PROJECT_ID (or --url, --token, --vlab,
--project); --json prints the API's JSON as it answered."""

EPILOG = """\
exit codes: 0 done; 1 the watched run ended FAILED or CANCELLED; 2 wrong usage or settings;
3 the API answered with an error; 4 the API could not be reached."""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="obp-workflow",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except CommandError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.code


if __name__ == "__main__":
    raise SystemExit(main())
