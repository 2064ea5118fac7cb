"""Who may do what: Keycloak groups, project references and the access table."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obp_workflow.core.errors import Forbidden, InvalidRequest, NotFound
from obp_workflow.core.identity import (
    Action,
    Membership,
    Principal,
    ProjectRef,
    Role,
    authorize,
    parse_groups,
)

VLAB = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
OTHER_VLAB = "7a2b3c4d-5e6f-4071-8b2c-3d4e5f6a7b8c"
PROJECT = "0a1b2c3d-4e5f-4a6b-8c7d-8e9f0a1b2c3d"
OTHER_PROJECT = "1b2c3d4e-5f60-4b7c-9d8e-9f0a1b2c3d4e"

CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

# ---------------------------------------------------------------------------- parse_groups


def test_parse_groups_reads_the_four_forms() -> None:
    groups = [
        f"/vlab/{VLAB}/admin",
        f"/vlab/{VLAB}/member",
        f"/proj/{VLAB}/{PROJECT}/admin",
        f"/proj/{VLAB}/{PROJECT}/member",
    ]

    assert parse_groups(groups) == {
        Membership(VLAB, None, Role.ADMIN),
        Membership(VLAB, None, Role.MEMBER),
        Membership(VLAB, PROJECT, Role.ADMIN),
        Membership(VLAB, PROJECT, Role.MEMBER),
    }


MALFORMED_GROUPS: list[object] = [
    f"/vlab/{VLAB}",
    f"/vlab/{VLAB}/admin/extra",
    f"/proj/{VLAB}/admin",
    f"/proj/{VLAB}/{PROJECT}",
    f"/proj/{VLAB}/{PROJECT}/member/extra",
    "/vlab/not-a-uuid/admin",
    f"/vlab/{{{VLAB}}}/admin",
    f"/vlab/urn:uuid:{VLAB}/admin",
    f"/vlab/{VLAB.replace('-', '')}/admin",
    f"/vlab/{VLAB.upper()}/admin",
    f"/proj/{VLAB.upper()}/{PROJECT}/member",
    f"/proj/{VLAB}/{PROJECT.upper()}/member",
    f"/proj/{VLAB}/not-a-uuid/member",
    f"/vlab/{VLAB}/owner",
    f"/vlab/{VLAB}/Admin",
    f"/proj/{VLAB}/{PROJECT}/superuser",
    f"/team/{VLAB}/admin",
    "/service/x/y",
    "/service/workflow/admin",
    f"/service/{VLAB}/admin",
    "offline_access",
    "default-roles-obp",
    "",
    "/",
    123,
    None,
    b"/vlab/6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b/admin",
    [f"/vlab/{VLAB}/admin"],
    {"path": f"/vlab/{VLAB}/admin"},
]


@pytest.mark.parametrize("group", MALFORMED_GROUPS, ids=lambda g: repr(g)[:50])
def test_a_malformed_group_is_ignored(group: object) -> None:
    assert parse_groups([group]) == frozenset()
    assert parse_groups([group, f"/proj/{VLAB}/{PROJECT}/member"]) == {
        Membership(VLAB, PROJECT, Role.MEMBER)
    }


@given(
    st.lists(
        st.one_of(
            st.text(),
            st.integers(),
            st.none(),
            st.binary(),
            st.builds(lambda parts: "/" + "/".join(parts), st.lists(st.text(), max_size=5)),
        ),
        max_size=8,
    )
)
def test_parse_groups_never_fails_and_yields_canonical_ids(groups: list[object]) -> None:
    for membership in parse_groups(groups):
        assert CANONICAL_UUID.fullmatch(membership.virtual_lab_id)
        assert membership.project_id is None or CANONICAL_UUID.fullmatch(membership.project_id)


# ---------------------------------------------------------------------------- ProjectRef


NON_CANONICAL_UUIDS = {
    "upper-case": PROJECT.upper(),
    "one-upper-case-digit": PROJECT[:-1] + "D",
    "braces": "{" + PROJECT + "}",
    "urn": "urn:uuid:" + PROJECT,
    "no-hyphens": PROJECT.replace("-", ""),
    "empty": "",
    "garbage": "not-a-uuid",
    "too-long": PROJECT + "0",
    "non-hex": PROJECT[:-1] + "g",
    "hyphens-misplaced": "0a1b2c3-d4e5f-4a6b-8c7d-8e9f0a1b2c3d",
    "hyphens-leading": "----0a1b2c3d4e5f4a6b8c7d8e9f0a1b2c3d",
    "underscore": "0a1b2c3_-4e5f-4a6b-8c7d-8e9f0a1b2c3d",
}


@pytest.mark.parametrize("value", NON_CANONICAL_UUIDS.values(), ids=NON_CANONICAL_UUIDS.keys())
@pytest.mark.parametrize("field", ["virtual_lab_id", "project_id"])
def test_project_ref_refuses_non_canonical_uuids_and_names_the_field(
    field: str, value: str
) -> None:
    ids = {"virtual_lab_id": VLAB, "project_id": PROJECT, field: value}

    with pytest.raises(InvalidRequest) as caught:
        ProjectRef.parse(ids["virtual_lab_id"], ids["project_id"])

    assert [e.field for e in caught.value.errors] == [field]
    assert "UUID" in caught.value.errors[0].rule


@given(st.uuids())
def test_project_ref_accepts_every_uuid_in_canonical_form(value: object) -> None:
    text = str(value)

    assert ProjectRef.parse(text, text) == ProjectRef(text, text)


def test_project_ref_key_fits_an_ecs_started_by() -> None:
    key = ProjectRef.parse(VLAB, PROJECT).key

    assert len(key) <= 128
    assert set(key) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/_")


# ---------------------------------------------------------------------------- access table

P = ProjectRef(VLAB, PROJECT)
SIBLING = ProjectRef(VLAB, OTHER_PROJECT)  # another project of the same vlab
SAME_ID_OTHER_VLAB = ProjectRef(OTHER_VLAB, PROJECT)


def principal(subject: str, *groups: str) -> Principal:
    return Principal(subject, subject, parse_groups(groups))


MEMBER = principal("member", f"/proj/{VLAB}/{PROJECT}/member")
PROJECT_ADMIN = principal("padmin", f"/proj/{VLAB}/{PROJECT}/admin")
VLAB_ADMIN = principal("vadmin", f"/vlab/{VLAB}/admin")
VLAB_MEMBER = principal("vmember", f"/vlab/{VLAB}/member")
OUTSIDER = principal(
    "outsider", f"/vlab/{OTHER_VLAB}/admin", f"/proj/{OTHER_VLAB}/{OTHER_PROJECT}/admin"
)

MEMBER_ACTIONS = [Action.SUBMIT, Action.LIST, Action.READ, Action.READ_INSTANCE]


@pytest.mark.parametrize("action", MEMBER_ACTIONS, ids=lambda a: a.value)
def test_a_member_may_work_in_the_project(action: Action) -> None:
    authorize(MEMBER, P, action)


def test_a_member_may_cancel_their_own_run() -> None:
    authorize(MEMBER, P, Action.CANCEL_OWN, owner=MEMBER.subject)


def test_a_member_may_not_cancel_someone_elses_run() -> None:
    with pytest.raises(Forbidden):
        authorize(MEMBER, P, Action.CANCEL_OWN, owner="someone-else")


@pytest.mark.parametrize("action", [Action.CANCEL_ANY, Action.MANAGE_INSTANCE])
def test_a_member_may_not_administer(action: Action) -> None:
    with pytest.raises(Forbidden):
        authorize(MEMBER, P, action)


@pytest.mark.parametrize("admin", [PROJECT_ADMIN, VLAB_ADMIN], ids=["project-admin", "vlab-admin"])
@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.value)
def test_an_admin_may_do_everything(admin: Principal, action: Action) -> None:
    authorize(admin, P, action, owner="someone-else")


@pytest.mark.parametrize("who", [VLAB_MEMBER, OUTSIDER], ids=["vlab-member", "outsider"])
@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.value)
def test_no_project_role_sees_nothing(who: Principal, action: Action) -> None:
    with pytest.raises(NotFound):
        authorize(who, P, action, owner=who.subject)


@pytest.mark.parametrize("who", [MEMBER, PROJECT_ADMIN], ids=["member", "project-admin"])
@pytest.mark.parametrize("elsewhere", [SIBLING, SAME_ID_OTHER_VLAB], ids=["sibling", "other-vlab"])
def test_a_project_role_gives_nothing_in_another_project(
    who: Principal, elsewhere: ProjectRef
) -> None:
    for action in Action:
        with pytest.raises(NotFound):
            authorize(who, elsewhere, action, owner=who.subject)


def test_a_vlab_admin_gives_nothing_in_another_vlab() -> None:
    with pytest.raises(NotFound):
        authorize(VLAB_ADMIN, SAME_ID_OTHER_VLAB, Action.READ)


def test_the_denial_message_names_the_action_but_no_other_run() -> None:
    with pytest.raises(Forbidden) as caught:
        authorize(MEMBER, P, Action.MANAGE_INSTANCE)

    assert "manage instance" in caught.value.message


_VLABS = [VLAB, OTHER_VLAB]
_PROJECTS = [PROJECT, OTHER_PROJECT]
_GROUP = st.one_of(
    st.builds(
        lambda v, r: f"/vlab/{v}/{r}", st.sampled_from(_VLABS), st.sampled_from(["admin", "member"])
    ),
    st.builds(
        lambda v, p, r: f"/proj/{v}/{p}/{r}",
        st.sampled_from(_VLABS),
        st.sampled_from(_PROJECTS),
        st.sampled_from(["admin", "member"]),
    ),
)


@given(
    groups=st.lists(_GROUP, max_size=5),
    project=st.builds(ProjectRef, st.sampled_from(_VLABS), st.sampled_from(_PROJECTS)),
    action=st.sampled_from(list(Action)),
    owner=st.sampled_from([None, "me", "someone-else"]),
)
def test_authorize_follows_memberships_only(
    groups: list[str], project: ProjectRef, action: Action, owner: str | None
) -> None:
    who = Principal("me", "me", parse_groups(groups))
    vlab, proj = project.virtual_lab_id, project.project_id
    in_project = any(g.startswith(f"/proj/{vlab}/{proj}/") for g in groups)
    vlab_admin = f"/vlab/{vlab}/admin" in groups
    admin = vlab_admin or f"/proj/{vlab}/{proj}/admin" in groups
    administrative = action in (Action.CANCEL_ANY, Action.MANAGE_INSTANCE) or (
        action is Action.CANCEL_OWN and owner == "someone-else"
    )

    try:
        authorize(who, project, action, owner=owner)
    except NotFound:
        assert not in_project, "a project member was told the project is absent"
        assert not vlab_admin, "the vlab's admin was told the project is absent"
    except Forbidden:
        assert in_project or vlab_admin, "someone without a role learnt the project exists"
        assert administrative, "a member was refused a member's action"
        assert not admin, "an admin was refused"
    else:
        assert in_project or vlab_admin, "someone without a role acted in the project"
        assert admin or not administrative, "a plain member administered the project"


# ---------------------------------------------------------------------------- one spelling per id

#: Every other spelling of a UUID that ``uuid.UUID`` reads as the same id.
OTHER_SPELLINGS = {
    "upper-case": str.upper,
    "braces": lambda u: "{" + u + "}",
    "urn": lambda u: "urn:uuid:" + u,
    "32-hex": lambda u: u.replace("-", ""),
}


@pytest.mark.parametrize("spell", OTHER_SPELLINGS.values(), ids=OTHER_SPELLINGS.keys())
@given(value=st.uuids().map(str).filter(lambda u: u != u.upper()))
def test_an_id_has_one_spelling_in_a_project_ref_and_in_a_group(
    spell: Callable[[str], str], value: str
) -> None:
    other = spell(value)
    assert uuid.UUID(other) == uuid.UUID(value)  # the same id to uuid.UUID ...

    with pytest.raises(InvalidRequest):  # ... but not to the service
        ProjectRef.parse(VLAB, other)
    assert parse_groups([f"/proj/{VLAB}/{other}/admin", f"/vlab/{other}/admin"]) == frozenset()
    assert ProjectRef.parse(VLAB, value).project_id == value
