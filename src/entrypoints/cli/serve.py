"""``obp-workflow serve``: the REST API over HTTP, through the local gateway.

On the one-machine family (``OBP_ADAPTERS=local``, the default) it is the whole service: the
API, the authorizer emulation, the local token issuer (its discovery document and keys served
under ``/realms/obp``, verified by the production Keycloak verifier) and, through the process
instance orchestrator, one worker process per project with work. At start it ensures a worker
for every project with unfinished runs (a restart loses nothing); on exit it stops every live
worker, idle or not (their jobs run on and are found again by the next worker).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from obp_workflow.core.identity import Principal, parse_groups

from .errors import problem_lines

if TYPE_CHECKING:
    from obp_workflow.adapters.local.token_issuer import LocalTokenIssuer
    from obp_workflow.entrypoints.composition.root import Service
    from obp_workflow.entrypoints.composition.settings import Settings
    from obp_workflow.entrypoints.local.gateway import LocalGateway

log = logging.getLogger("obp_workflow.serve")

ExtraRoutes = Mapping[str, Callable[[], tuple[int, Mapping[str, Any]]]]


@dataclass
class Running:
    """The service behind its gateway, started by :func:`start`."""

    settings: Settings
    container: Service
    server: LocalGateway
    issuer: LocalTokenIssuer | None

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        """Stop the gateway, then the workers it started (their jobs run on)."""
        self.server.stop()
        if self.settings.adapters == "local":
            _stop_workers(self.container)


def start(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8080,
    overrides: Mapping[str, object] | None = None,
    extra_routes: ExtraRoutes | None = None,
) -> Running:
    """Build the service as ``settings`` say and serve it in the background; on the local
    family also publish the issuer and resume the workers of projects with unfinished runs.
    OSError or ValueError when it cannot start (the address taken, OBP_HOME unusable)."""
    from obp_workflow.entrypoints.composition.root import build
    from obp_workflow.entrypoints.local.gateway import make_server

    container = build(settings, **(overrides or {}))
    routes: dict[str, Callable[[], tuple[int, Mapping[str, Any]]]] = dict(extra_routes or {})
    issuer_box: list[LocalTokenIssuer] = []
    if settings.adapters == "local":
        routes.update(_issuer_routes(issuer_box))
    server = make_server(host, port, container, extra_routes=routes)
    if settings.adapters == "local":
        issuer_box.append(_local_issuer(settings, container, host, server.server_address[1]))
    server.start()
    if settings.adapters == "local":
        _resume_workers(container)
    return Running(settings, container, server, issuer_box[0] if issuer_box else None)


def serve(
    host: str,
    port: int,
    dev_token: str | None,
    dev_groups: str,
    extra_routes: ExtraRoutes | None = None,
) -> int:
    """The service behind a local HTTP gateway, until interrupted (SIGINT or SIGTERM)."""
    from obp_workflow.adapters.fake.token_verifier import FakeTokenVerifier
    from obp_workflow.entrypoints.composition.logs import apply_log_level
    from obp_workflow.entrypoints.composition.settings import SettingsError, load_settings

    try:
        settings = load_settings()
        apply_log_level(settings.log_level)
    except SettingsError as exc:
        print(*problem_lines(exc), sep="\n", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    if dev_token:
        if settings.adapters != "fake":
            print(
                "--dev-token is only for the in-memory adapters (OBP_ADAPTERS=fake)",
                file=sys.stderr,
            )
            return 2
        groups = [g for g in dev_groups.split(",") if g]
        user = Principal("local-user", "local-user", parse_groups(groups))
        overrides["token_verifier"] = FakeTokenVerifier({dev_token: user})
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        running = start(settings, host, port, overrides, extra_routes)
    except (OSError, ValueError) as exc:
        print(*problem_lines(exc), sep="\n", file=sys.stderr)
        return 2
    _announce(settings, running.url, running.issuer)
    try:
        stop.wait()
    finally:
        running.close()
    return 0


# ==================================================================== the local family


def _issuer_routes(issuer_box: list[LocalTokenIssuer]) -> ExtraRoutes:
    """The issuer's two documents, on Keycloak's paths; answered once the issuer is made."""
    from obp_workflow.adapters.local.token_issuer import DISCOVERY_PATH, JWKS_PATH, realm_path

    return {
        realm_path() + DISCOVERY_PATH: lambda: (200, issuer_box[0].discovery()),
        realm_path() + JWKS_PATH: lambda: (200, issuer_box[0].jwks()),
    }


def _local_issuer(settings: Settings, container: Service, host: str, port: int) -> LocalTokenIssuer:
    """The realm served here; the API trusts it unless OBP_KEYCLOAK_ISSUER names another."""
    from dependency_injector import providers

    from obp_workflow.adapters.local.token_issuer import LocalTokenIssuer, issuer_url
    from obp_workflow.entrypoints.composition.local import home_of, token_verifier

    # Bound to every interface: the verifier reaches the issuer on loopback.
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    issuer = LocalTokenIssuer(home_of(settings), issuer_url(shown, port))
    if not settings.keycloak_issuer:
        served = settings.model_copy(update={"keycloak_issuer": issuer.issuer})
        container.token_verifier.override(providers.Object(token_verifier(served)))
    return issuer


def _resume_workers(container: Service) -> None:
    """A worker for every project with unfinished runs (after a restart of ``serve``)."""
    projects = {brief.project for brief in container.run_repository().list_active()}
    for project in sorted(projects, key=str):
        instance = container.instance_orchestrator().ensure(project)
        log.warning("worker of project %s: %s (%s)", project, instance.status, instance.instance_id)


def _stop_workers(container: Service) -> None:
    """Stop every live worker of OBP_HOME: those with unfinished runs, and the idle ones."""
    from obp_workflow.adapters.local.instance_orchestrator import ProcessInstanceOrchestrator

    orchestrator = container.instance_orchestrator()
    projects = {brief.project for brief in container.run_repository().list_active()}
    if isinstance(orchestrator, ProcessInstanceOrchestrator):
        projects.update(orchestrator.projects())
    stops = [
        threading.Thread(target=orchestrator.stop, args=(p, "serve stopped"), daemon=True)
        for p in projects
        if (info := orchestrator.describe(p)) is not None and info.live
    ]
    for t in stops:
        t.start()
    for t in stops:
        t.join(35)


def _announce(settings: Settings, url: str, issuer: LocalTokenIssuer | None) -> None:
    lines = [f"obp-workflow API on {url}/v1 ({settings.adapters} adapters)"]
    if issuer is not None:
        lines += [
            f"state in {settings.home}; cluster: {settings.local_cluster}",
            f"tokens: export OBP_TOKEN=$(obp-workflow token --issuer {issuer.issuer} "
            "--group /proj/<virtual-lab-id>/<project-id>/member)",
            f"then: export OBP_API_URL={url}; obp-workflow submit examples/lif-network.json",
            "each project's worker runs its own luigid: its visualiser URL is printed here "
            "when the worker starts",
        ]
    print("\n".join(lines), file=sys.stderr, flush=True)
