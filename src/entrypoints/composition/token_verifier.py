"""The token verifier alone, from the few settings it needs: the Lambda authorizer's cold path.

The authorizer needs one port, the TokenVerifier. Building the whole composition root for it
(pydantic-settings, dependency-injector, every adapter of the family) costs most of its cold
start, so this module reads only ``OBP_ADAPTERS``, ``OBP_LOG_LEVEL`` and the
``OBP_KEYCLOAK_*`` variables, with the same names, defaults and rules as
:class:`.settings.Settings`, and builds only the verifier that the composition root
(:mod:`.root`) would wire:

- ``fake``: a :class:`~obp_workflow.adapters.fake.token_verifier.FakeTokenVerifier` that knows no
  token (every token is refused), as ``composition.fake.FakeAdapters.token_verifier``;
- ``aws``: a :class:`~obp_workflow.adapters.keycloak.verifier.KeycloakTokenVerifier`, as
  ``composition.aws.AwsAdapters.token_verifier``;
- ``local``: the same verifier, trusting the local issuer that ``serve`` publishes (by
  default at ``http://127.0.0.1:8080/realms/obp``) and its client, as
  ``composition.local.LocalAdapters.token_verifier``.

It imports only the standard library at module level; the adapter of the family asked for is
imported when it is built. Every problem with the settings is reported at once, by variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from obp_workflow.ports.identity import TokenVerifier

ADAPTERS = ("local", "fake", "aws")
GROUPS_SOURCES = ("token", "userinfo")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_PREFIX = "OBP_"


class TokenSettingsError(ValueError):
    """One line per missing or wrong setting of the token verifier, naming its variable."""


@dataclass(frozen=True)
class TokenSettings:
    """The settings the token verifier depends on (a subset of ``Settings``, same meaning)."""

    adapters: Literal["local", "fake", "aws"] = "local"
    keycloak_issuer: str | None = None
    keycloak_audiences: tuple[str, ...] = ()
    keycloak_authorized_parties: tuple[str, ...] = ()
    keycloak_groups_source: Literal["token", "userinfo"] = "token"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def load_token_settings(environ: Mapping[str, str] | None = None) -> TokenSettings:
    """The token settings from ``environ`` (default: the process environment).

    Variable names are case-insensitive, as pydantic-settings reads them; values are not.
    Raises :class:`TokenSettingsError` listing every problem.
    """
    source = os.environ if environ is None else environ
    env = {name.upper(): value for name, value in source.items() if name.upper()[:4] == _PREFIX}
    problems: list[str] = []

    def choice(name: str, allowed: tuple[str, ...], default: str) -> str:
        value = env.get(_PREFIX + name, default)
        if value not in allowed:
            quoted = [repr(a) for a in allowed]  # worded as pydantic words it
            options = " or ".join(
                [", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 2 else quoted
            )
            problems.append(f"{_PREFIX}{name}: Input should be {options}")
            return default
        return value

    adapters = choice("ADAPTERS", ADAPTERS, "local")
    groups_source = choice("KEYCLOAK_GROUPS_SOURCE", GROUPS_SOURCES, "token")
    log_level = choice("LOG_LEVEL", LOG_LEVELS, "INFO")
    issuer = env.get(_PREFIX + "KEYCLOAK_ISSUER")
    audiences = env.get(_PREFIX + "KEYCLOAK_AUDIENCES", "")
    parties = env.get(_PREFIX + "KEYCLOAK_AUTHORIZED_PARTIES", "")
    if adapters == "aws":
        # Settings' rule, restricted to the verifier's variables.
        if not issuer:
            problems.append("required with OBP_ADAPTERS=aws: OBP_KEYCLOAK_ISSUER")
        elif not (audiences or parties):
            problems.append("required with OBP_ADAPTERS=aws: OBP_KEYCLOAK_AUDIENCES")
    if problems:
        raise TokenSettingsError("invalid configuration:\n  " + "\n  ".join(problems))
    return TokenSettings(
        adapters=adapters,  # type: ignore[arg-type]  # checked against ADAPTERS above
        keycloak_issuer=issuer,
        keycloak_audiences=_split(audiences),
        keycloak_authorized_parties=_split(parties),
        keycloak_groups_source=groups_source,  # type: ignore[arg-type]  # checked above
        log_level=log_level,  # type: ignore[arg-type]  # checked against LOG_LEVELS above
    )


def build_token_verifier(settings: TokenSettings | None = None) -> TokenVerifier:
    """The TokenVerifier of ``settings.adapters`` (default: read from the environment)."""
    settings = load_token_settings() if settings is None else settings
    if settings.adapters == "aws":
        from obp_workflow.adapters.keycloak.verifier import KeycloakSettings, KeycloakTokenVerifier

        return KeycloakTokenVerifier(
            KeycloakSettings(
                issuer=settings.keycloak_issuer or "",
                audiences=settings.keycloak_audiences,
                authorized_parties=settings.keycloak_authorized_parties,
                groups_source=settings.keycloak_groups_source,
            )
        )
    if settings.adapters == "local":
        from obp_workflow.adapters.keycloak.verifier import KeycloakSettings, KeycloakTokenVerifier
        from obp_workflow.adapters.local.token_issuer import CLIENT_ID, DEFAULT_ISSUER

        return KeycloakTokenVerifier(
            KeycloakSettings(
                issuer=settings.keycloak_issuer or DEFAULT_ISSUER,
                audiences=settings.keycloak_audiences,
                authorized_parties=settings.keycloak_authorized_parties or (CLIENT_ID,),
                groups_source=settings.keycloak_groups_source,
            )
        )
    from obp_workflow.adapters.fake.token_verifier import FakeTokenVerifier

    return FakeTokenVerifier()


def _split(value: str | None) -> tuple[str, ...]:
    """``Settings.split``: comma-separated, each part stripped, empty parts dropped."""
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())
