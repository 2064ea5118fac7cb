"""The domain's errors. Ports raise these and only these; entrypoints map them to protocols.

Messages are written for the person who reads them: they say what went wrong and what to do,
and never carry a secret (token, key) or a value the caller did not send.
"""

from __future__ import annotations

from dataclasses import dataclass


class DomainError(Exception):
    """Base of every error the service raises on purpose."""

    #: A stable machine-readable kind, used as the problem type by the API.
    kind: str = "domain-error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class FieldError:
    """One rejected value: where it is and which rule it broke."""

    field: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.rule}"


class InvalidRequest(DomainError):
    kind = "invalid-request"

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = tuple(errors)
        super().__init__("invalid request: " + "; ".join(str(e) for e in self.errors))


class Unauthenticated(DomainError):
    """The caller's credentials are missing or not valid. Deliberately says nothing more."""

    kind = "unauthenticated"

    def __init__(self, message: str = "authentication required") -> None:
        super().__init__(message)


class Forbidden(DomainError):
    """The caller can see the thing but may not do this to it."""

    kind = "forbidden"


class NotFound(DomainError):
    kind = "not-found"


class Conflict(DomainError):
    """A write lost a race (optimistic concurrency) or repeats something that exists."""

    kind = "conflict"


class IdempotencyConflict(Conflict):
    kind = "idempotency-conflict"


class IllegalTransition(DomainError):
    kind = "illegal-transition"


class CorruptRecord(DomainError):
    """A stored record cannot be read back: damaged, or written by an unknown schema version."""

    kind = "corrupt-record"


class ClusterUnreachable(DomainError):
    """The cluster did not answer (network, SSH, scheduler). Never a reason to fail a run."""

    kind = "cluster-unreachable"


class HostKeyRejected(ClusterUnreachable):
    """The cluster presented a host key other than the pinned one: refused, loudly."""

    kind = "host-key-rejected"


class ClusterAccessDenied(ClusterUnreachable):
    """The cluster refused the service's key for a user."""

    kind = "cluster-access-denied"


class SubmissionUnclear(DomainError):
    """The job may or may not exist: the reply to a submission was lost or could not be read."""

    kind = "submission-unclear"


class SubmissionRejected(DomainError):
    """The scheduler refused the job with a definite answer (bad partition, limits...)."""

    kind = "submission-rejected"


class SecretNotFound(DomainError):
    kind = "secret-not-found"


class SecretExists(Conflict):
    """A secret was to be created under a name that is taken: the stored value is kept."""

    kind = "secret-exists"


class ServiceUnavailable(DomainError):
    """An outside service (provisioner, knowledge graph, AWS) failed transiently."""

    kind = "service-unavailable"


class SyncIncomplete(DomainError):
    """Outputs are missing or short at the destination after a sync."""

    kind = "sync-incomplete"

    def __init__(self, offending: list[str], message: str | None = None) -> None:
        self.offending = tuple(offending)
        shown = ", ".join(self.offending[:20])
        more = f" and {len(self.offending) - 20} more" if len(self.offending) > 20 else ""
        super().__init__(message or f"outputs not confirmed at the destination: {shown}{more}")
