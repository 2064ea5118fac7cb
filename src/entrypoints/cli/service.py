"""The service's own commands: ``demo``, ``serve``, ``openapi`` and ``worker``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(sub: Subparsers) -> None:
    demo = sub.add_parser("demo", help="run one simulation end to end on in-memory adapters")
    demo.add_argument(
        "--no-lustre", action="store_true", help="a cluster without Lustre (direct upload)"
    )
    demo.set_defaults(handler=_demo)

    serve = sub.add_parser(
        "serve", help="serve the REST API over HTTP on loopback (the local gateway)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port (8080; 0: any free one)")
    serve.add_argument(
        "--dev-token",
        help="in-memory adapters only: accept this bearer token for a local user",
    )
    serve.add_argument(
        "--dev-groups",
        default="",
        help="comma-separated Keycloak groups of that user, e.g. /proj/VLAB/PROJECT/member",
    )
    serve.set_defaults(handler=_serve)

    openapi = sub.add_parser("openapi", help="print the API's OpenAPI document (docs/openapi.json)")
    openapi.set_defaults(handler=_openapi)

    worker = sub.add_parser(
        "worker",
        help="drive the runs of the project OBP_VIRTUAL_LAB_ID/OBP_PROJECT_ID "
        "(the workflow container's command)",
    )
    worker.set_defaults(handler=_worker)


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo

    return demo(lustre=not args.no_lustre)


def _serve(args: argparse.Namespace) -> int:
    from .serve import serve

    return serve(args.host, args.port, args.dev_token, args.dev_groups)


def _openapi(args: argparse.Namespace) -> int:
    from obp_workflow.entrypoints.http.openapi import openapi_json

    sys.stdout.write(openapi_json())
    return 0


def _worker(args: argparse.Namespace) -> int:
    from obp_workflow.entrypoints.worker.command import main as worker

    return worker()
