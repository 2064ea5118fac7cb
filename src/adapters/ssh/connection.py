"""Long-lived SSH connections to the clusters' head nodes, one per (cluster, account).

Every command is a channel on the shared connection. Sockets are opened by hand with
TCP_NODELAY (paramiko's own socket costs ~40 ms per command on loopback). Host keys are pinned
from the ClusterHandle: an unknown or changed key refuses the connection. A handle whose key is
``AcceptNewHostKey`` (the ``accept-new`` policy, no key pinned yet) names the secret that pins
it: when that secret exists its key is pinned like any other; when not, the key presented is
accepted and pinned by creating the secret, before any user key is offered. Creating never
overwrites, so of connections racing to pin (threads, workers) one key wins, and a loser that
was shown another key refuses it. Private keys come from the SecretStore as text, live only in
memory, and never reach a log line or an error message; host keys are public.
Reconnects back off exponentially with jitter, and each cluster has a budget of new
connections and of scheduler queries per minute, so a storm of work never hammers a head node.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import random
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import paramiko

from obp_workflow.core.backoff import retry_wait
from obp_workflow.core.cluster import AcceptNewHostKey, ClusterHandle, HostKey, KeyRole, SecretRef
from obp_workflow.core.errors import (
    ClusterAccessDenied,
    ClusterUnreachable,
    DomainError,
    HostKeyRejected,
    SecretExists,
    SecretNotFound,
)
from obp_workflow.ports.secrets import SecretStore

log = logging.getLogger(__name__)


class CommandLost(Exception):
    """A command was sent but its outcome is unknown (connection lost, timed out)."""


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect. The host key says how the server is checked when a
    connection opens; it is not part of which connection is meant (a handle that pinned its
    first key meanwhile still means the connection already open)."""

    cluster: str
    host: str
    port: int
    user: str
    key: SecretRef
    host_key: HostKey = field(compare=False)

    @classmethod
    def of(cls, cluster: ClusterHandle, role: KeyRole) -> Endpoint:
        return cls(
            cluster.name,
            cluster.host,
            cluster.port,
            cluster.user_for(role),
            cluster.key_for(role),
            cluster.host_key,
        )

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port} ({self.cluster})"


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_status == 0

    def text(self) -> str:
        return self.stdout.decode(errors="replace")

    def error_text(self, limit: int = 500) -> str:
        return self.stderr.decode(errors="replace").strip()[:limit]


class Budget:
    """A token bucket: at most ``per_minute`` takes per minute, refilled continuously."""

    def __init__(self, per_minute: int, now: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.tokens = float(per_minute)
        self.rate = per_minute / 60.0
        self._now = now
        self._last = now()
        self._lock = threading.Lock()

    def take(self, wait: float = 0.0) -> bool:
        """Take a token, waiting up to ``wait`` seconds for one; False when none came."""
        deadline = self._now() + wait
        while True:
            with self._lock:
                now = self._now()
                self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
                self._last = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return True
                missing = (1 - self.tokens) / self.rate
            if now + missing > deadline:
                return False
            time.sleep(missing)


def load_private_key(text: str, ref: SecretRef) -> paramiko.PKey:
    """A paramiko key from its OpenSSH/PEM text; errors name the secret, never its content."""
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
    raise ClusterAccessDenied(f"the secret {ref} does not hold a usable SSH private key")


def _host_key_entry(host_key: str) -> paramiko.PKey:
    parts = host_key.split()
    try:
        return paramiko.PKey.from_type_string(parts[0], base64.b64decode(parts[1]))
    except (paramiko.SSHException, ValueError, IndexError) as exc:
        raise HostKeyRejected(f"the pinned host key is not a valid key ({exc})") from None


def _openssh_line(key: paramiko.PKey) -> str:
    """``<type> <base64>``, as in ``known_hosts`` and ``ssh_host_*_key.pub``."""
    return f"{key.get_name()} {key.get_base64()}"


def _fingerprint(key_line: str) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key line (what ``ssh-keygen -l`` shows)."""
    parts = key_line.split()
    try:
        blob = base64.b64decode(parts[1])
    except (ValueError, IndexError):
        return "unreadable key"
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _same_key(a: str, b: str) -> bool:
    """The same public key (type and body; a trailing comment does not count)."""
    return a.split()[:2] == b.split()[:2]


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """OpenSSH's ``accept-new`` for one connection: the key presented is pinned by creating the
    secret, which never overwrites. When the secret appeared meanwhile (a connection racing this
    one, or a retry after a lost reply), the key is accepted only if it is the one stored.

    Called by paramiko after the key exchange and before authentication: no user key is
    offered to a server whose key is not pinned. Errors are the domain's (HostKeyRejected, or
    the store's ServiceUnavailable) and leave ``connect``.
    """

    def __init__(self, secrets: SecretStore, endpoint: Endpoint, pin_to: SecretRef) -> None:
        self._secrets = secrets
        self._endpoint = endpoint
        self._pin_to = pin_to

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        presented = _openssh_line(key)
        try:
            self._secrets.create(self._pin_to, presented)
        except SecretExists:
            stored = self._secrets.get(self._pin_to).reveal()
            if not _same_key(stored, presented):
                raise HostKeyRejected(
                    f"{self._endpoint} presented the host key {_fingerprint(presented)}, but "
                    f"{_fingerprint(stored)} was pinned meanwhile in {self._pin_to}: refusing it"
                ) from None
            log.info(
                "host key of %s is the one pinned meanwhile in %s (%s)",
                self._endpoint,
                self._pin_to,
                _fingerprint(presented),
            )
            return
        log.warning(
            "pinned the host key of %s on first use: %s %s, in %s",
            self._endpoint,
            key.get_name(),
            _fingerprint(presented),
            self._pin_to,
        )


class Connection:
    """One authenticated transport; thread-safe for commands, SFTP behind a lock."""

    def __init__(self, endpoint: Endpoint, client: paramiko.SSHClient) -> None:
        self.endpoint = endpoint
        self._client = client
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.RLock()  # SFTPClient is not thread-safe
        self.commands = 0

    @property
    def alive(self) -> bool:
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    @property
    def transport(self) -> paramiko.Transport:
        transport = self._client.get_transport()
        if transport is None:
            raise ClusterUnreachable(f"the connection to {self.endpoint} is closed")
        return transport

    def run(
        self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 60.0
    ) -> CommandResult:
        """Run ``argv`` (each word quoted) in a new channel.

        ClusterUnreachable when the channel cannot be opened (nothing was sent); CommandLost
        when it was sent and no complete answer came back.
        """
        command = shlex.join(argv)
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise ClusterUnreachable(f"the connection to {self.endpoint} is closed")
        try:
            channel = transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ClusterUnreachable(f"cannot open a channel to {self.endpoint}: {exc}") from None
        self.commands += 1
        try:
            channel.settimeout(timeout)
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
                channel.shutdown_write()
            # Without stdin no EOF is sent: a command that has already ended makes the server
            # free its channel, and an EOF racing that makes OpenSSH drop the whole connection
            # ("ieof packet referred to nonexistent channel"). The service's commands never
            # read stdin.
            stdout = _read_all(channel.recv)
            stderr = _read_all(channel.recv_stderr)
            if not channel.status_event.wait(timeout):
                raise CommandLost(f"no exit status from {self.endpoint} within {timeout} s")
            status = channel.recv_exit_status()
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as exc:
            raise CommandLost(f"lost the answer of {self.endpoint}: {exc}") from None
        finally:
            channel.close()
        if status < 0:
            raise CommandLost(f"{self.endpoint} closed the command without an exit status")
        return CommandResult(status, stdout, stderr)

    def sftp(self) -> paramiko.SFTPClient:
        with self._sftp_lock:
            if self._sftp is None or self._sftp.sock.closed:
                try:
                    self._sftp = self._client.open_sftp()
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    raise ClusterUnreachable(
                        f"cannot open SFTP to {self.endpoint}: {exc}"
                    ) from None
            return self._sftp

    @property
    def sftp_lock(self) -> threading.RLock:
        return self._sftp_lock

    def close(self) -> None:
        try:
            if self._sftp is not None:
                self._sftp.close()
        finally:
            self._client.close()


def _gcm_first_transport(
    sock: Any,
    /,
    *,
    gss_kex: bool,
    gss_deleg_creds: bool,
    disabled_algorithms: Mapping[str, Iterable[str]] | None,
) -> paramiko.Transport:
    """Paramiko's transport, offering AES-GCM first (OpenSSH has had it since 6.2): its tag is
    checked by the cipher, in OpenSSL, where paramiko checks an HMAC byte by byte in Python on
    every packet (measured on the test stack: a fifth of a command's CPU). A server without it
    still gets paramiko's other ciphers."""
    if gss_kex:  # (gss_deleg_creds, on by default, means nothing without it)
        raise ValueError("the pool authenticates with keys, never GSS-API")
    transport = paramiko.Transport(sock, disabled_algorithms=disabled_algorithms)
    options = transport.get_security_options()
    offered = tuple(options.ciphers)
    options.ciphers = (
        *(c for c in offered if "-gcm@" in c),
        *(c for c in offered if "-gcm@" not in c),
    )
    return transport


def _read_all(recv: Callable[[int], bytes]) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = recv(1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@dataclass(frozen=True)
class PoolSettings:
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    keepalive_seconds: int = 30
    connects_per_minute: int = 6
    queries_per_minute: int = 120
    query_wait_seconds: float = 2.0
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 60.0


class _Health:
    """Failures of one endpoint and when it may be tried again."""

    def __init__(self) -> None:
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""


class SshPool:
    """The connections of the service, one per endpoint, shared by every run."""

    def __init__(
        self,
        secrets: SecretStore,
        settings: PoolSettings | None = None,
        *,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.secrets = secrets
        self.settings = settings or PoolSettings()
        self._now = now
        self._connections: dict[Endpoint, Connection] = {}
        self._health: dict[Endpoint, _Health] = {}
        self._connect_budgets: dict[str, Budget] = {}
        self._query_budgets: dict[str, Budget] = {}
        self._locks: dict[Endpoint, threading.Lock] = {}
        self._lock = threading.Lock()
        self.connects = 0  # successful connections opened, for tests and benchmarks
        self.connect_attempts = 0  # connections tried (within budget and backoff)

    # ---------------------------------------------------------------- connections

    def connection(self, endpoint: Endpoint) -> Connection:
        with self._lock:
            lock = self._locks.setdefault(endpoint, threading.Lock())
        with lock:
            current = self._connections.get(endpoint)
            if current is not None and current.alive:
                return current
            if current is not None:
                current.close()
                del self._connections[endpoint]
            fresh = self._connect(endpoint)
            self._connections[endpoint] = fresh
            return fresh

    def _connect(self, endpoint: Endpoint) -> Connection:
        health = self._health.setdefault(endpoint, _Health())
        now = self._now()
        if now < health.retry_at:
            raise ClusterUnreachable(
                f"not reconnecting to {endpoint} for {health.retry_at - now:.0f} s after "
                f"{health.failures} failures (last: {health.last_error})"
            )
        budget = self._budget(self._connect_budgets, endpoint, self.settings.connects_per_minute)
        if not budget.take():
            raise ClusterUnreachable(
                f"the budget of {self.settings.connects_per_minute} new connections per minute "
                f"to {endpoint.cluster} is spent"
            )
        self.connect_attempts += 1
        try:
            connection = self._open(endpoint)
        except ClusterUnreachable as exc:
            health.failures += 1
            health.last_error = exc.message
            delay = retry_wait(
                health.failures,
                None,
                self.settings.backoff_base_seconds,
                self.settings.backoff_cap_seconds,
                random.uniform,  # jitter, not cryptography
            )
            health.retry_at = self._now() + delay
            raise
        health.failures = 0
        health.retry_at = 0.0
        self.connects += 1
        log.info("connected to %s", endpoint)
        return connection

    def _host_key_now(self, endpoint: Endpoint) -> HostKey:
        """The host key to pin, or AcceptNewHostKey while none is pinned (accept-new): a key
        pinned on first use since the handle was made is read from its secret."""
        trust = endpoint.host_key
        if not isinstance(trust, AcceptNewHostKey):
            return trust
        try:
            return self.secrets.get(trust.pin_to).reveal().strip()
        except SecretNotFound:
            return trust

    def _open(self, endpoint: Endpoint) -> Connection:
        pkey = load_private_key(self.secrets.get(endpoint.key).reveal(), endpoint.key)
        client = paramiko.SSHClient()
        host_key = self._host_key_now(endpoint)
        if isinstance(host_key, AcceptNewHostKey):
            client.set_missing_host_key_policy(_AcceptNew(self.secrets, endpoint, host_key.pin_to))
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            pinned = _host_key_entry(host_key)
            name = endpoint.host if endpoint.port == 22 else f"[{endpoint.host}]:{endpoint.port}"
            client.get_host_keys().add(name, pinned.get_name(), pinned)
        s = self.settings
        try:
            sock = socket.create_connection((endpoint.host, endpoint.port), s.connect_timeout)
        except OSError as exc:
            raise ClusterUnreachable(f"cannot reach {endpoint}: {exc.strerror or exc}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            client.connect(
                endpoint.host,
                endpoint.port,
                username=endpoint.user,
                pkey=pkey,
                sock=sock,
                timeout=s.connect_timeout,
                banner_timeout=s.connect_timeout,
                auth_timeout=s.connect_timeout,
                look_for_keys=False,
                allow_agent=False,
                transport_factory=_gcm_first_transport,
            )
        except paramiko.BadHostKeyException:
            client.close()
            raise HostKeyRejected(
                f"{endpoint} presented a host key that is not the pinned one: refusing it"
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise ClusterAccessDenied(
                f"{endpoint} refused the key {endpoint.key} for user {endpoint.user}"
            ) from None
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HostKeyRejected(
                    f"{endpoint} presented an unknown host key: refusing it"
                ) from None
            raise ClusterUnreachable(f"SSH to {endpoint} failed: {exc}") from None
        except (OSError, EOFError) as exc:
            client.close()
            raise ClusterUnreachable(f"SSH to {endpoint} failed: {exc}") from None
        except DomainError:  # from _AcceptNew: refused, or the store could not pin
            client.close()
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(s.keepalive_seconds)
        return Connection(endpoint, client)

    # ---------------------------------------------------------------- commands

    def run(
        self,
        endpoint: Endpoint,
        argv: Sequence[str],
        *,
        query: bool = False,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> CommandResult:
        """Run a command on the endpoint's shared connection.

        ``query`` marks scheduler queries, which count against the cluster's query budget.
        A lost connection is dropped (the next command reconnects) and CommandLost raised.
        """
        if query:
            budget = self._budget(self._query_budgets, endpoint, self.settings.queries_per_minute)
            if not budget.take(self.settings.query_wait_seconds):
                raise ClusterUnreachable(
                    f"the budget of {self.settings.queries_per_minute} scheduler queries per "
                    f"minute on {endpoint.cluster} is spent"
                )
        connection = self.connection(endpoint)
        try:
            return connection.run(
                argv, stdin=stdin, timeout=timeout or self.settings.command_timeout
            )
        except (CommandLost, ClusterUnreachable):
            self.drop(endpoint, connection)
            raise

    def drop(self, endpoint: Endpoint, connection: Connection | None = None) -> None:
        """Forget a broken connection so that the next command opens a new one."""
        with self._lock:
            current = self._connections.get(endpoint)
            if current is not None and (connection is None or current is connection):
                del self._connections[endpoint]
            else:
                current = None
        if current is not None:
            current.close()

    def close(self) -> None:
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        for c in connections:
            c.close()

    def commands_sent(self) -> int:
        with self._lock:
            return sum(c.commands for c in self._connections.values())

    def _budget(self, budgets: dict[str, Budget], endpoint: Endpoint, per_minute: int) -> Budget:
        with self._lock:
            return budgets.setdefault(endpoint.cluster, Budget(per_minute, self._now))
