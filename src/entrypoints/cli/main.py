"""The command line, ``obp-workflow``: each command imports what it needs when it runs.

- ``demo``: one simulation end to end on the in-memory adapters;
- ``serve``: the REST API over HTTP on loopback;
- ``openapi``: the API's OpenAPI document, as committed in ``docs/openapi.json``;
- ``worker``: the workflow container, driving one project's runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="obp-workflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run one simulation end to end on in-memory adapters")
    p_demo.add_argument(
        "--no-lustre", action="store_true", help="a cluster without Lustre (direct upload)"
    )
    p_serve = sub.add_parser(
        "serve", help="serve the REST API over HTTP on loopback (the local gateway)"
    )
    p_serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    p_serve.add_argument("--port", type=int, default=8080, help="port (8080; 0: any free one)")
    p_serve.add_argument(
        "--dev-token",
        help="in-memory adapters only: accept this bearer token for a local user",
    )
    p_serve.add_argument(
        "--dev-groups",
        default="",
        help="comma-separated Keycloak groups of that user, e.g. /proj/VLAB/PROJECT/member",
    )
    sub.add_parser("openapi", help="print the API's OpenAPI document (docs/openapi.json)")
    sub.add_parser(
        "worker",
        help="drive the runs of the project OBP_VIRTUAL_LAB_ID/OBP_PROJECT_ID "
        "(the workflow container's command)",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import demo

        return demo(lustre=not args.no_lustre)
    if args.command == "serve":
        from .serve import serve

        return serve(args.host, args.port, args.dev_token, args.dev_groups)
    if args.command == "worker":
        from obp_workflow.entrypoints.worker.command import main as worker

        return worker()
    if args.command == "openapi":
        from obp_workflow.entrypoints.http.openapi import openapi_json

        sys.stdout.write(openapi_json())
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    raise SystemExit(main())
