"""``obp-workflow token``: an access token of the local realm, printed on standard output
(``export OBP_TOKEN=$(obp-workflow token --group /proj/VLAB/PROJECT/member)``).

The realm's signing key lives in ``OBP_HOME`` (made on first use); the token is for the issuer
the local API trusts (by default the one ``serve`` publishes at its default address).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import USAGE, CommandError

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(sub: Subparsers) -> None:
    token = sub.add_parser("token", help="print an access token of the local realm")
    token.add_argument(
        "--group",
        action="append",
        default=[],
        help="a Keycloak group of the caller, e.g. /proj/VLAB/PROJECT/member (repeatable)",
    )
    token.add_argument("--username", help="the caller's name (the current user's)")
    token.add_argument("--lifetime", type=float, default=3600, help="seconds (3600)")
    token.add_argument("--home", help="the folder holding the realm's key (OBP_HOME)")
    token.add_argument(
        "--issuer", help="the realm's URL, as served (default: serve's at its default address)"
    )
    token.set_defaults(handler=_token)


def _token(args: argparse.Namespace) -> int:
    from obp_workflow.adapters.local.token_issuer import DEFAULT_ISSUER, mint_token
    from obp_workflow.entrypoints.composition.local import home_folder

    home = args.home or os.environ.get("OBP_HOME")
    if not home:
        raise CommandError("give --home or set OBP_HOME", USAGE)
    try:
        minted = mint_token(
            home_folder(Path(home).expanduser()),
            args.issuer or DEFAULT_ISSUER,
            args.group,
            username=args.username or getpass.getuser(),
            lifetime_seconds=args.lifetime,
        )
    except (ValueError, OSError) as exc:
        raise CommandError(str(exc), USAGE) from None
    sys.stdout.write(minted + "\n")
    return 0
