"""SecretStore over AWS Secrets Manager (boto3 low-level client), with a small TTL cache.

The SSH keys of the clusters live in Secrets Manager under the ARNs the provisioner returns.
Every SSH (re)connection asks for its key, so values are kept in memory for ``ttl_seconds``
(default 5 minutes: a rotated key is picked up within that time). Only successes are cached:
a missing secret is asked again next time, because the provisioner may create it meanwhile.

``create`` is CreateSecret: it never overwrites (ResourceExistsException is ``SecretExists``, and
of two callers racing for a name exactly one succeeds). A created value is cached as if read; a
refused creation drops the name's entry, so that the caller's next ``get`` reads what is stored
(the value that won the race, or one replaced by an operator), not an older copy.

No value ever reaches an exception, a repr or a log line: errors name the reference (ARN or
name) and AWS's error code, never the response's content, and are raised without chaining
anything that held the value.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import BotoCoreError, ClientError

from obp_workflow.core.cluster import SecretRef
from obp_workflow.core.errors import SecretExists, SecretNotFound, ServiceUnavailable
from obp_workflow.ports.secrets import Secret, SecretStore

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager.client import SecretsManagerClient

log = logging.getLogger(__name__)


class SecretsManagerSecretStore(SecretStore):
    def __init__(
        self,
        client: SecretsManagerClient,
        ttl_seconds: float = 300,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_seconds < 0:
            raise ValueError("ttl_seconds must be >= 0 (0 disables the cache)")
        self._client = client
        self._ttl = ttl_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, Secret]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SecretsManagerSecretStore(ttl_seconds={self._ttl}, cached={len(self._cache)})"

    def get(self, ref: SecretRef) -> Secret:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(ref.ref)
            if hit is not None and now < hit[0]:
                return hit[1]
        secret = self._fetch(ref)
        if self._ttl > 0:
            with self._lock:
                self._cache[ref.ref] = (self._clock() + self._ttl, secret)
                self._prune(now)
        return secret

    def create(self, ref: SecretRef, value: str) -> None:
        failure: Exception | None = None
        try:
            self._client.create_secret(Name=ref.ref, SecretString=value)
        except ClientError as exc:
            failure = _client_failure(ref, exc, doing="create", value=value)
        except BotoCoreError as exc:
            failure = ServiceUnavailable(
                f"AWS Secrets Manager unreachable while creating secret {ref.ref}: "
                f"{type(exc).__name__}"
            )
        if failure is not None:
            if isinstance(failure, SecretExists):
                with self._lock:
                    self._cache.pop(ref.ref, None)
            raise failure
        log.debug("created secret %s", ref.ref)
        if self._ttl > 0:
            with self._lock:
                self._cache[ref.ref] = (self._clock() + self._ttl, Secret(value))

    def _fetch(self, ref: SecretRef) -> Secret:
        # Errors are raised outside the ``except`` blocks, so that no exception keeps the one it
        # replaces as ``__context__`` (botocore's parse errors quote the response they failed
        # on, and a UnicodeDecodeError holds the bytes).
        failure: Exception | None = None
        try:
            answer = cast("Mapping[str, Any]", self._client.get_secret_value(SecretId=ref.ref))
        except ClientError as exc:
            failure = _client_failure(ref, exc)
        except BotoCoreError as exc:
            failure = ServiceUnavailable(
                f"AWS Secrets Manager unreachable while reading secret {ref.ref}: "
                f"{type(exc).__name__}"
            )
        if failure is not None:
            raise failure
        # Exactly one of the two is present (the stubs type both as always there).
        text = answer.get("SecretString")
        if text is None:
            binary = answer.get("SecretBinary")
            if not isinstance(binary, bytes):
                raise ServiceUnavailable(f"secret {ref.ref} has no current value")
            try:
                text = binary.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            if text is None:
                raise ServiceUnavailable(f"secret {ref.ref} is binary and not UTF-8 text")
        log.debug("read secret %s (version %s)", ref.ref, answer.get("VersionId", "?"))
        return Secret(str(text))

    def _prune(self, now: float) -> None:
        """Drop expired entries (called with the lock held) so the cache cannot grow forever."""
        for name in [name for name, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[name]


def _client_failure(
    ref: SecretRef, exc: ClientError, doing: str = "return", value: str | None = None
) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", "error"))
    if code == "ResourceNotFoundException":
        return SecretNotFound(f"secret {ref.ref} not found in AWS Secrets Manager")
    if code == "ResourceExistsException":
        return SecretExists(f"secret {ref.ref} exists already in AWS Secrets Manager")
    message = str(error.get("Message", ""))
    if value and any(part in message for part in value.split() if len(part) >= 8):
        message = "(AWS's message quotes the value: left out)"
    message = message[:300]
    return ServiceUnavailable(
        f"AWS Secrets Manager could not {doing} secret {ref.ref}: {code}"
        + (f": {message}" if message else "")
    )
