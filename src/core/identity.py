"""Who is asking, for which project, and what they may do there.

Memberships come from Keycloak group paths:
``/vlab/{vlab}/admin|member`` and ``/proj/{vlab}/{project}/admin|member``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from obp_workflow.core.errors import FieldError, Forbidden, InvalidRequest, NotFound

#: The one spelling of a Virtual Lab's or a project's id: lower-case hex digits, 8-4-4-4-12 (what
#: ``str(uuid.UUID(...))`` writes). Anchored, for JSON Schema and pydantic as well as ``re``.
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
UUID_RULE = "must be a UUID in canonical form: lower-case, 8-4-4-4-12 hex digits"
_UUID = re.compile(UUID_PATTERN)


def _canonical_uuid(value: str, field_name: str) -> str:
    """``value`` when it is a UUID in its canonical form, or InvalidRequest."""
    # uuid.UUID also reads upper case, braces, urn:uuid:, missing hyphens and '_': each would be
    # another spelling of the same id. Only the canonical one is an id, wherever it comes from.
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise InvalidRequest([FieldError(field_name, UUID_RULE)])
    return value


@dataclass(frozen=True, order=True)
class ProjectRef:
    """A Virtual Lab project: the unit of tenancy (one cluster, one workflow instance each)."""

    virtual_lab_id: str
    project_id: str

    @classmethod
    def parse(cls, virtual_lab_id: str, project_id: str) -> ProjectRef:
        return cls(
            _canonical_uuid(virtual_lab_id, "virtual_lab_id"),
            _canonical_uuid(project_id, "project_id"),
        )

    @property
    def key(self) -> str:
        """A stable string key, usable as an ECS ``startedBy`` (<= 128 chars of [A-Za-z0-9-/_])."""
        return f"{self.virtual_lab_id}/{self.project_id}"

    def __str__(self) -> str:
        return self.key


class Role(Enum):
    MEMBER = "member"
    ADMIN = "admin"


@dataclass(frozen=True)
class Membership:
    """A role in a whole virtual lab (project_id None) or in one of its projects."""

    virtual_lab_id: str
    project_id: str | None
    role: Role


def parse_groups(groups: Iterable[object]) -> frozenset[Membership]:
    """Memberships from Keycloak group paths; anything malformed (an id in another spelling than
    the canonical one included) is ignored, never fatal."""
    found: set[Membership] = set()
    for group in groups:
        if not isinstance(group, str):
            continue
        parts = group.strip("/").split("/")
        try:
            if len(parts) == 3 and parts[0] == "vlab":
                found.add(Membership(_canonical_uuid(parts[1], "group"), None, Role(parts[2])))
            elif len(parts) == 4 and parts[0] == "proj":
                found.add(
                    Membership(
                        _canonical_uuid(parts[1], "group"),
                        _canonical_uuid(parts[2], "group"),
                        Role(parts[3]),
                    )
                )
        except (InvalidRequest, ValueError):
            continue
    return frozenset(found)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. Holds no token: only who they are and where they belong."""

    subject: str
    username: str
    memberships: frozenset[Membership] = field(default_factory=frozenset)

    def roles_in(self, project: ProjectRef) -> frozenset[ProjectRole]:
        roles: set[ProjectRole] = set()
        for m in self.memberships:
            if m.virtual_lab_id != project.virtual_lab_id:
                continue
            if m.project_id is None:
                if m.role is Role.ADMIN:
                    roles.add(ProjectRole.VLAB_ADMIN)
            elif m.project_id == project.project_id:
                roles.add(ProjectRole.PROJECT_ADMIN if m.role is Role.ADMIN else ProjectRole.MEMBER)
        return frozenset(roles)


class ProjectRole(Enum):
    MEMBER = "project-member"
    PROJECT_ADMIN = "project-admin"
    VLAB_ADMIN = "vlab-admin"


class Action(Enum):
    SUBMIT = "submit"
    LIST = "list"
    READ = "read"
    CANCEL_OWN = "cancel-own"
    CANCEL_ANY = "cancel-any"
    READ_INSTANCE = "read-instance"
    MANAGE_INSTANCE = "manage-instance"


_MEMBER_ACTIONS = frozenset(
    {Action.SUBMIT, Action.LIST, Action.READ, Action.CANCEL_OWN, Action.READ_INSTANCE}
)
_ADMIN_ACTIONS = _MEMBER_ACTIONS | {Action.CANCEL_ANY, Action.MANAGE_INSTANCE}

#: The access rules, as data. A role not listed here sees nothing of the project.
ACCESS_TABLE: dict[ProjectRole, frozenset[Action]] = {
    ProjectRole.MEMBER: _MEMBER_ACTIONS,
    ProjectRole.PROJECT_ADMIN: _ADMIN_ACTIONS,
    ProjectRole.VLAB_ADMIN: _ADMIN_ACTIONS,
}


def allowed_actions(principal: Principal, project: ProjectRef) -> frozenset[Action]:
    actions: set[Action] = set()
    for role in principal.roles_in(project):
        actions |= ACCESS_TABLE[role]
    return frozenset(actions)


def authorize(
    principal: Principal, project: ProjectRef, action: Action, *, owner: str | None = None
) -> None:
    """Raise unless ``principal`` may do ``action`` in ``project``.

    Someone with no role in the project gets NotFound (the project's runs do not exist for
    them); someone who can see the project but lacks the right gets Forbidden. ``owner`` is the
    subject who submitted the run, for cancellation.
    """
    actions = allowed_actions(principal, project)
    if not actions:
        raise NotFound(f"project {project} not found")
    if action is Action.CANCEL_OWN and owner is not None and owner != principal.subject:
        action = Action.CANCEL_ANY
    if action not in actions:
        raise Forbidden(f"you may not {action.value.replace('-', ' ')} in project {project}")
