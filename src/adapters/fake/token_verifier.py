"""An in-memory TokenVerifier. Its own module, light to import: the authorizer's cold path."""

from __future__ import annotations

from obp_workflow.core.errors import Unauthenticated
from obp_workflow.core.identity import Principal
from obp_workflow.ports.identity import TokenVerifier


class FakeTokenVerifier(TokenVerifier):
    """Knows a fixed set of tokens; any other token is refused."""

    def __init__(self, tokens: dict[str, Principal] | None = None) -> None:
        self._tokens = dict(tokens or {})

    def issue(self, token: str, principal: Principal) -> None:
        self._tokens[token] = principal

    def verify(self, token: str) -> Principal:
        principal = self._tokens.get(token)
        if principal is None:
            raise Unauthenticated()
        return principal
