"""SecretStore over files: one file per secret in ``$OBP_HOME/secrets/``.

- Each secret is a file of mode 0600 in a folder of mode 0700, named after the secret. A name
  is one path component of letters, digits and ``_.:+=@-``, not starting with a dot: it never
  leads out of the folder.
- ``create`` writes the value under a temporary name and publishes it with ``link(2)``: it
  never overwrites (a taken name is ``SecretExists``), of creations racing for a name exactly
  one wins, and a reader never sees a partly written value.
- Aliases, given at construction, name existing files elsewhere (an SSH key file of a
  configured cluster): they are read, never written (``create`` of an alias is
  ``SecretExists``), and only when no one but their owner may read them.

Errors name the reference, never a value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from obp_workflow.core.cluster import SecretRef
from obp_workflow.core.errors import SecretExists, SecretNotFound
from obp_workflow.ports.secrets import Secret, SecretStore

from .private_files import create_exclusive, private_folder, read_private

SECRETS_FOLDER = "secrets"
_NAME = re.compile(r"[A-Za-z0-9_:+=@-][A-Za-z0-9_.:+=@-]{0,254}")


class FileSecretStore(SecretStore):
    """Secrets in ``home/secrets``; ``aliases`` map secret names to files read in place."""

    def __init__(self, home: Path, aliases: Mapping[str, Path] | None = None) -> None:
        self._folder = Path(home) / SECRETS_FOLDER
        self._aliases = {name: Path(path) for name, path in (aliases or {}).items()}
        for name in self._aliases:
            if not _NAME.fullmatch(name):
                raise ValueError(f"invalid secret name {name!r} for an alias")
        private_folder(self._folder)

    def __repr__(self) -> str:
        return f"FileSecretStore({str(self._folder)!r}, aliases={sorted(self._aliases)})"

    def get(self, ref: SecretRef) -> Secret:
        alias = self._aliases.get(ref.ref)
        if alias is not None:
            try:
                data = read_private(alias, follow_links=True)
            except FileNotFoundError:
                raise SecretNotFound(f"secret {ref.ref} not found (no file {alias})") from None
        else:
            path = self._path(ref)
            if path is None:
                raise SecretNotFound(f"secret {ref.ref!r} not found: not a valid secret name")
            try:
                data = read_private(path)
            except FileNotFoundError:
                raise SecretNotFound(f"secret {ref.ref} not found") from None
        try:
            return Secret(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"secret {ref.ref} is not UTF-8 text") from None

    def create(self, ref: SecretRef, value: str) -> None:
        if ref.ref in self._aliases:
            raise SecretExists(f"secret {ref.ref} exists already (a read-only alias)")
        path = self._path(ref)
        if path is None:
            raise ValueError(
                f"invalid secret name {ref.ref!r}: letters, digits and _.:+=@- "
                "(not starting with a dot), at most 255"
            )
        if not create_exclusive(path, value.encode("utf-8")):
            raise SecretExists(f"secret {ref.ref} exists already")

    def _path(self, ref: SecretRef) -> Path | None:
        return self._folder / ref.ref if _NAME.fullmatch(ref.ref) else None
