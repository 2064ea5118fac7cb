"""``obp-workflow serve``: the REST API over HTTP on loopback, through the local gateway."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

from obp_workflow.core.identity import Principal, parse_groups


def serve(
    host: str,
    port: int,
    dev_token: str | None,
    dev_groups: str,
    extra_routes: Mapping[str, Callable[[], tuple[int, Mapping[str, Any]]]] | None = None,
) -> int:
    """The API and its authorizer behind a local HTTP gateway, until interrupted;
    ``extra_routes`` are fixed JSON documents on public paths (GET, no authorization)."""
    from obp_workflow.adapters.fake.token_verifier import FakeTokenVerifier
    from obp_workflow.entrypoints.composition.logs import apply_log_level
    from obp_workflow.entrypoints.composition.root import build
    from obp_workflow.entrypoints.composition.settings import SettingsError, load_settings
    from obp_workflow.entrypoints.local.gateway import serve as serve_forever

    try:
        settings = load_settings()
        apply_log_level(settings.log_level)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
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
    serve_forever(host, port, build(settings, **overrides), extra_routes=extra_routes)
    return 0
