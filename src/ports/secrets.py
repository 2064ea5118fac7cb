from __future__ import annotations

from abc import abstractmethod
from typing import Protocol, runtime_checkable

from obp_workflow.core.cluster import SecretRef


class Secret:
    """A secret value that does not show itself in reprs, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__


@runtime_checkable
class SecretStore(Protocol):
    @abstractmethod
    def get(self, ref: SecretRef) -> Secret:
        """SecretNotFound (naming the reference, never a value) when it does not exist."""

    @abstractmethod
    def create(self, ref: SecretRef, value: str) -> None:
        """Create the secret named ``ref`` holding ``value``; never overwrites.

        SecretExists (naming the reference, never a value) when the name is taken: the stored
        value is kept. Of creations racing for one name, exactly one succeeds. A created
        secret is read back by ``get(ref)`` at once.
        """
