from __future__ import annotations

from abc import abstractmethod
from typing import Protocol, runtime_checkable

from obp_workflow.core.identity import Principal


@runtime_checkable
class TokenVerifier(Protocol):
    @abstractmethod
    def verify(self, token: str) -> Principal:
        """The caller behind a bearer token; Unauthenticated for any bad token."""
