"""The REST API over HTTP (httpx), for the client commands: where it is and who calls it (from
the flags, else the ``OBP_`` environment), and every error as one line from its problem
document."""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from obp_workflow.core.identity import UUID_PATTERN

from .errors import API_ERROR, UNREACHABLE, USAGE, CommandError

_TOKEN = re.compile(r"^[\x21-\x7e]+$")
_USER_AGENT = "obp-workflow-cli"


@dataclass(frozen=True)
class Target:
    """The API, the caller's token and the project the commands work in."""

    url: str  # the base, before /v1
    token: str
    virtual_lab_id: str
    project_id: str
    timeout: float = 30.0

    @property
    def runs_path(self) -> str:
        return f"/v1/virtual-labs/{self.virtual_lab_id}/projects/{self.project_id}/runs"

    def run_path(self, run_id: str, *rest: str) -> str:
        return "/".join((self.runs_path, quote(run_id, safe=""), *rest))


def target_from(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Target:
    """The target the flags name, else the environment; a missing or wrong setting is a
    usage error naming it."""
    env = os.environ if environ is None else environ
    url, url_name = _setting(args.url, "--url", env, "OBP_API_URL")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise CommandError(
            f"{url_name} must be the API's http(s) base URL, e.g. https://api.example.org",
            USAGE,
        )
    token, token_name = _setting(args.token, "--token", env, "OBP_TOKEN")
    if not _TOKEN.fullmatch(token):
        raise CommandError(f"{token_name} must be one printable word (a bearer token)", USAGE)
    vlab, vlab_name = _setting(args.vlab, "--vlab", env, "OBP_VIRTUAL_LAB_ID")
    project, project_name = _setting(args.project, "--project", env, "OBP_PROJECT_ID")
    for value, name in ((vlab, vlab_name), (project, project_name)):
        if not re.fullmatch(UUID_PATTERN, value):
            raise CommandError(f"{name} must be a UUID in lower case, not {value!r}", USAGE)
    return Target(url.rstrip("/"), token, vlab, project, args.timeout)


def _setting(
    flag_value: str | None, flag: str, env: Mapping[str, str], variable: str
) -> tuple[str, str]:
    if flag_value is not None:
        value = flag_value.strip()
        if not value:
            raise CommandError(f"{flag} is empty", USAGE)
        return value, flag
    value = env.get(variable, "").strip()
    if not value:
        raise CommandError(f"{variable} is not set (or give {flag})", USAGE)
    return value, variable


@dataclass(frozen=True)
class Answer:
    """A successful answer: its JSON as sent, and parsed."""

    text: str
    data: Any


class ApiClient:
    """Requests to the API; an error answer or no answer at all is a :class:`CommandError`."""

    def __init__(self, target: Target, transport: httpx.BaseTransport | None = None) -> None:
        self.target = target
        self._http = httpx.Client(
            timeout=target.timeout,
            transport=transport,
            headers={
                "Authorization": f"Bearer {target.token}",
                "Accept": "application/json",
                "User-Agent": _USER_AGENT,
            },
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Answer:
        return self._call("GET", path, params=params)

    def post(self, path: str, body: object, headers: Mapping[str, str] | None = None) -> Answer:
        return self._call("POST", path, json=body, headers=headers)

    def _call(self, method: str, path: str, **kwargs: Any) -> Answer:
        try:
            response = self._http.request(method, self.target.url + path, **kwargs)
        except httpx.TransportError as exc:
            raise CommandError(
                f"cannot reach the API at {self.target.url}: {_transport_reason(exc)}",
                UNREACHABLE,
                transient=True,
            ) from None
        if response.status_code >= 400:
            raise CommandError(
                problem_line(response),
                API_ERROR,
                transient=response.status_code in (429, 502, 503, 504),
            )
        try:
            return Answer(response.text, json.loads(response.text))
        except ValueError:
            raise CommandError(
                f"{response.status_code} {response.reason_phrase}: the answer is not JSON",
                API_ERROR,
            ) from None


def problem_line(response: httpx.Response) -> str:
    """``404 Not Found: run x not found``, from an RFC 9457 problem document (or whatever else
    the API, or a gateway before it, answered)."""
    head = f"{response.status_code} {response.reason_phrase}".rstrip()
    try:
        body = response.json()
    except ValueError:
        text = " ".join(response.text.split())[:300]
        return f"{head}: {text}" if text else head
    if not isinstance(body, dict):
        return head
    detail = body.get("detail") or body.get("message") or body.get("title")
    line = f"{head}: {detail}" if isinstance(detail, str) and detail else head
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        named = [
            f"{e.get('field')}: {e.get('rule')}"
            for e in errors
            if isinstance(e, dict) and e.get("field") is not None
        ]
        named = [n for n in named if n not in line]  # the detail may name them already
        if named:
            line += " (" + "; ".join(named) + ")"
    return line


def _transport_reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time"
    reason = str(exc) or type(exc).__name__
    return " ".join(reason.split())


def client_for(args: argparse.Namespace) -> ApiClient:
    return ApiClient(target_from(args))
