"""The file SecretStore of the one-machine family under the SecretStore contract.

Secrets are put behind the adapter's back as files in a temporary OBP_HOME, the way an operator
would place one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from obp_workflow.adapters.local.secret_store import SECRETS_FOLDER, FileSecretStore
from obp_workflow.core.cluster import SecretRef
from obp_workflow.ports.secrets import SecretStore

if TYPE_CHECKING:
    from tests.contract.harness import SecretStoreHarness


class FileSecretStoreHarness:
    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="obp-home-"))
        self.files = FileSecretStore(self.home)
        self.store: SecretStore = self.files

    def put(self, name: str, value: str) -> SecretRef:
        fd = os.open(self.home / SECRETS_FOLDER / name, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(value)
        return SecretRef(name)

    def close(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


if TYPE_CHECKING:  # mypy proves the harness implements the harness protocol
    _stores: list[Callable[[], SecretStoreHarness]] = [FileSecretStoreHarness]
