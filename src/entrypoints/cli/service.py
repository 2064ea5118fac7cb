"""The service's own commands: ``demo``, ``serve``, ``openapi`` and ``worker``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(sub: Subparsers) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the example simulation end to end on this machine, in a fresh OBP_HOME",
    )
    demo.add_argument(
        "--cluster",
        choices=("local", "ssh-slurm"),
        default="local",
        help="where the job runs: 'local' (a process here) or 'ssh-slurm' (OBP_SLURM_*)",
    )
    demo.add_argument("--request", help="the run request to submit (the LIF network example)")
    demo.add_argument("--home", help="the OBP_HOME to use (default: a new temporary folder)")
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
    from pathlib import Path

    from .demo import demo

    return demo(
        cluster=args.cluster,
        request=Path(args.request) if args.request else None,
        home=Path(args.home).expanduser().resolve() if args.home else None,
    )


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
