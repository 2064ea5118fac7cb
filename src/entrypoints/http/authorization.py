"""The REQUEST authorizer's logic, and the caller's context between the authorizer and the API.

API Gateway caches the authorizer's answer by identity source (the ``Authorization`` header)
and reuses it for every method and path, so the policy allows the whole stage
(``{apiId}/{stage}/*/*``) and the per-project check happens in the API, where the path is known.

The caller travels to the API in ``requestContext.authorizer``, whose values must be flat
strings: ``subject``, ``username`` and ``memberships``, the canonical group paths of the caller's
Virtual Lab and project roles joined by ``,`` (a character no canonical path contains).
:func:`principal_from_context` reads them back; this module owns both ends of that contract.

Any bad, missing or malformed token raises ``Exception("Unauthorized")``: API Gateway's
convention for a 401, whose body says nothing about why. This module imports only the domain's
identity: it is on the authorizer Lambda's cold path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from obp_workflow.core.errors import Unauthenticated
from obp_workflow.core.identity import Membership, Principal, parse_groups

if TYPE_CHECKING:
    from obp_workflow.ports.identity import TokenVerifier

log = logging.getLogger("obp_workflow.authorizer")

#: Joins the group paths in the authorizer context; canonical paths are UUIDs, '/' and a role.
MEMBERSHIP_SEPARATOR = ","
#: RFC 6750 ``b64token``, after the scheme and one space.
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] ([A-Za-z0-9\-._~+/]+=*)")
#: ``arn:aws:execute-api:{region}:{account}:{apiId}/{stage}/{verb}/{resource...}``
#: The resource part is the request's decoded path: it may hold any character, newlines too.
_METHOD_ARN = re.compile(r"(arn:[^:]+:execute-api:[^:]+:[^:]+:[^/:]+/[^/]+)/.+", re.DOTALL)


def authorize(event: Mapping[str, Any], verifier: TokenVerifier) -> dict[str, Any]:
    """The authorizer's answer to ``event``, or ``Exception("Unauthorized")``."""
    resource = stage_wildcard(event.get("methodArn"))
    token = bearer_token(event)
    if token is None:
        raise Exception("Unauthorized")  # the exact form API Gateway expects
    try:
        principal = verifier.verify(token)
    except Unauthenticated as exc:
        log.info("token refused: %s", exc.message)
        raise Exception("Unauthorized") from None
    if not principal.subject:
        log.warning("token refused: the verifier returned a principal without a subject")
        raise Exception("Unauthorized")
    return {
        "principalId": principal.subject,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [
                {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": resource}
            ],
        },
        "context": principal_context(principal),
    }


def bearer_token(event: Mapping[str, Any]) -> str | None:
    """The token of the one ``Authorization: Bearer <token>`` header; None for anything else.

    A REQUEST authorizer reads the headers (the name in any case; a repeated header is refused);
    a TOKEN authorizer's event carries the header value as ``authorizationToken``.
    """
    if event.get("type") == "TOKEN":
        values = [event.get("authorizationToken")]
    else:
        values = _header_values(event, "authorization")
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    match = _BEARER.fullmatch(values[0])
    return match.group(1) if match else None


def _header_values(event: Mapping[str, Any], name: str) -> list[object]:
    multi = event.get("multiValueHeaders")
    if isinstance(multi, Mapping):
        found = [v for k, vs in multi.items() if k.lower() == name for v in _as_list(vs)]
        if found:
            return found
    single = event.get("headers")
    if isinstance(single, Mapping):
        return [v for k, v in single.items() if isinstance(k, str) and k.lower() == name]
    return []


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else [value]


def stage_wildcard(method_arn: object) -> str:
    """``arn:...:{apiId}/{stage}/*/*`` for the ``methodArn`` of the request."""
    match = _METHOD_ARN.fullmatch(method_arn) if isinstance(method_arn, str) else None
    if match is None:
        # API Gateway always sends one: this is a misconfiguration, never the caller's fault.
        raise ValueError(f"the authorizer event has no usable methodArn: {method_arn!r:.200}")
    return f"{match.group(1)}/*/*"


# ---------------------------------------------------------------- the context contract


def group_path(membership: Membership) -> str:
    """The canonical Keycloak group path of one membership."""
    if membership.project_id is None:
        return f"/vlab/{membership.virtual_lab_id}/{membership.role.value}"
    return f"/proj/{membership.virtual_lab_id}/{membership.project_id}/{membership.role.value}"


def principal_context(principal: Principal) -> dict[str, str]:
    """The caller as flat strings, for ``requestContext.authorizer``."""
    paths = sorted(group_path(m) for m in principal.memberships)
    return {
        "subject": principal.subject,
        "username": principal.username,
        "memberships": MEMBERSHIP_SEPARATOR.join(paths),
    }


def principal_from_context(authorizer: object) -> Principal | None:
    """The caller that :func:`authorize` put in ``requestContext.authorizer``; None without one."""
    if not isinstance(authorizer, Mapping):
        return None
    subject = authorizer.get("subject")
    if not isinstance(subject, str) or not subject:
        return None
    username = authorizer.get("username")
    memberships = authorizer.get("memberships")
    groups: Iterable[str] = (
        memberships.split(MEMBERSHIP_SEPARATOR) if isinstance(memberships, str) else ()
    )
    return Principal(
        subject=subject,
        username=username if isinstance(username, str) else "",
        memberships=parse_groups(groups),
    )
