"""An in-memory SecretStore, with fault injection."""

from __future__ import annotations

from obp_workflow.core.cluster import SecretRef
from obp_workflow.core.errors import SecretNotFound
from obp_workflow.ports.secrets import Secret, SecretStore

from .faults import Faults


class FakeSecretStore(SecretStore):
    def __init__(self, secrets: dict[str, str] | None = None) -> None:
        self._secrets = dict(secrets or {})
        self.faults = Faults()

    def put(self, ref: str, value: str) -> None:
        self._secrets[ref] = value

    def get(self, ref: SecretRef) -> Secret:
        self.faults.before("get")
        value = self._secrets.get(ref.ref)
        if value is None:
            raise SecretNotFound(f"secret {ref.ref} not found")
        return Secret(value)
