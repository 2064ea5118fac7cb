"""An in-memory SecretStore, with fault injection."""

from __future__ import annotations

import threading

from obp_workflow.core.cluster import SecretRef
from obp_workflow.core.errors import SecretExists, SecretNotFound
from obp_workflow.ports.secrets import Secret, SecretStore

from .faults import Faults


class FakeSecretStore(SecretStore):
    """``faults``: ``get`` and ``create`` fail before they act; ``create`` may also lose its
    reply after the secret is stored (the caller cannot tell whether it was)."""

    def __init__(self, secrets: dict[str, str] | None = None) -> None:
        self._secrets = dict(secrets or {})
        self._lock = threading.Lock()
        self.faults = Faults()

    def put(self, ref: str, value: str) -> None:
        """Store or replace a secret behind the port's back (an operator, the provisioner)."""
        with self._lock:
            self._secrets[ref] = value

    def get(self, ref: SecretRef) -> Secret:
        self.faults.before("get")
        with self._lock:
            value = self._secrets.get(ref.ref)
        if value is None:
            raise SecretNotFound(f"secret {ref.ref} not found")
        return Secret(value)

    def create(self, ref: SecretRef, value: str) -> None:
        self.faults.before("create")
        with self._lock:
            if ref.ref in self._secrets:
                raise SecretExists(f"secret {ref.ref} exists already")
            self._secrets[ref.ref] = value
        self.faults.after("create")
