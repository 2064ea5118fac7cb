"""The Keycloak TokenVerifier under the TokenVerifier contract, against a real HTTP issuer.

The issuer is ``tests/keycloak_issuer.py`` (Keycloak's paths, RS256 tokens with ``kid``); the
verifier finds everything through the realm's discovery document, as in production.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from obp_workflow.adapters.keycloak.verifier import KeycloakSettings, KeycloakTokenVerifier
from obp_workflow.core.identity import Membership, Principal
from obp_workflow.ports.identity import TokenVerifier
from tests.keycloak_issuer import CLIENT_ID, KeycloakIssuer

if TYPE_CHECKING:
    from tests.contract.harness import TokenVerifierHarness


def group_path(membership: Membership) -> str:
    """The Keycloak group path that ``parse_groups`` reads back as ``membership``."""
    role = membership.role.value
    if membership.project_id is None:
        return f"/vlab/{membership.virtual_lab_id}/{role}"
    return f"/proj/{membership.virtual_lab_id}/{membership.project_id}/{role}"


class KeycloakTokenVerifierHarness:
    def __init__(self) -> None:
        self.issuer = KeycloakIssuer()
        self.keycloak = KeycloakTokenVerifier(
            KeycloakSettings(issuer=self.issuer.issuer, authorized_parties=(CLIENT_ID,))
        )
        self.verifier: TokenVerifier = self.keycloak

    def issue(self, principal: Principal) -> str:
        groups = sorted(group_path(m) for m in principal.memberships)
        # Keycloak's microprofile-jwt scope puts realm roles in "groups" too: they are ignored.
        return self.issuer.mint(
            principal.subject,
            username=principal.username,
            groups=[*groups, "offline_access"],
        )

    def close(self) -> None:
        self.keycloak.close()
        self.issuer.close()


if TYPE_CHECKING:  # mypy proves the harness implements the harness protocol
    _verifiers: list[Callable[[], TokenVerifierHarness]] = [KeycloakTokenVerifierHarness]
