"""What a scientist asks for: a validated, self-describing simulation request.

Every value that will reach the cluster is checked here against a rule that names itself, so a
bad request is refused with the field and the rule, before anything is recorded.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from obp_workflow.core.errors import FieldError, InvalidRequest

MAX_METADATA_BYTES = 16 * 1024
MAX_OUTPUTS = 10_000
MAX_INPUTS = 256

_SCHEDULER_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_.@+=,-]+$")
#: C0 and C1 control characters (tab and newline included), DEL, and the Unicode line and
#: paragraph separators (a line break to a log reader, the end of a JavaScript string).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NO_CONTROL = "must not contain control characters or line separators"


def _check_relative_path(value: str) -> str:
    if not value or len(value.encode()) > 1024:
        raise ValueError("must be a relative path of 1 to 1024 bytes")
    if value.startswith("/"):
        raise ValueError("must be relative to the run folder, not absolute")
    parts = value.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError("must not contain empty, '.' or '..' parts")
    if not all(_PATH_PART.fullmatch(p) for p in parts):
        raise ValueError("may only use letters, digits and _ . @ + = , - in each part")
    if parts[0].startswith("-"):
        raise ValueError("must not start with '-'")
    return value


def _check_input(value: str) -> str:
    if value.startswith(("https://", "http://")):
        if len(value) > 2048 or any(c.isspace() for c in value) or _CONTROL.search(value):
            raise ValueError("a knowledge-graph id must be an IRI without spaces, <= 2048 chars")
        return value
    if value.startswith("/"):
        norm = posixpath.normpath(value)
        if ".." in value.split("/") or not all(
            _PATH_PART.fullmatch(p) for p in norm.strip("/").split("/") if p
        ):
            raise ValueError("a cluster path must be absolute, without '..', of safe characters")
        return norm
    raise ValueError("must be a knowledge-graph id (https://...) or an absolute cluster path")


def _refuse_control_characters(metadata: dict[str, Any]) -> None:
    """Refuse each key or text value with a control character, by name: ``metadata.<key>``,
    with the key's own control characters written as ``\\uXXXX``."""
    errors: list[InitErrorDetails] = []
    for key, item in metadata.items():
        if _CONTROL.search(key):
            rule = "the key " + _NO_CONTROL
        elif isinstance(item, str) and _CONTROL.search(item):
            rule = _NO_CONTROL
        else:
            continue
        shown = _CONTROL.sub(lambda m: f"\\u{ord(m.group()):04x}", key)
        error = PydanticCustomError("control_character", rule)
        errors.append(InitErrorDetails(type=error, loc=(shown,), input=item))
    if errors:
        # A ValidationError raised in a field validator reports its errors under the field.
        raise ValidationError.from_exception_data("metadata", errors)


Text = Annotated[str, StringConstraints(max_length=4096)]
OutputPath = Annotated[str, AfterValidator(_check_relative_path)]
InputRef = Annotated[str, AfterValidator(_check_input)]


class Resources(BaseModel):
    """What the job asks of the scheduler."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Strict: a count is a JSON integer, never "4", true or 4.0 read as one.
    nodes: StrictInt = Field(1, ge=1, le=4096)
    tasks_per_node: StrictInt = Field(1, ge=1, le=1024)
    cpus_per_task: StrictInt = Field(1, ge=1, le=1024)
    memory_mb: StrictInt | None = Field(None, ge=1, le=4 * 1024 * 1024)
    time_limit_minutes: StrictInt = Field(60, ge=1, le=14 * 24 * 60)
    partition: str | None = None
    account: str | None = None

    @field_validator("partition", "account")
    @classmethod
    def _scheduler_name(cls, value: str | None) -> str | None:
        if value is not None and not _SCHEDULER_NAME.fullmatch(value):
            raise ValueError("must be 1-64 of letters, digits, '_', '.', '-', not starting '-'")
        return value


class SimulationRequest(BaseModel):
    """A request to run something on the project's cluster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["simulation", "emodel-fitting", "job"] = "simulation"
    name: str | None = Field(None, max_length=200)
    command: list[Text] | None = Field(None, min_length=1, max_length=256)
    script: str | None = Field(None, min_length=1, max_length=64 * 1024)
    resources: Resources = Field(default_factory=Resources)
    inputs: list[InputRef] = Field(default_factory=list, max_length=MAX_INPUTS)
    outputs: list[OutputPath] = Field(default_factory=list, max_length=MAX_OUTPUTS)
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and _CONTROL.search(value):
            raise ValueError(_NO_CONTROL)
        return value

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if any("\x00" in arg for arg in value):
            raise ValueError("must not contain NUL characters")
        if not value[0] or value[0].startswith("-"):
            raise ValueError("the program (first item) must be non-empty and not start with '-'")
        return value

    @field_validator("script")
    @classmethod
    def _script(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("must not name the same output twice")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        _refuse_control_characters(value)
        if any(len(k) > 128 or not k for k in value):
            raise ValueError("keys must be 1 to 128 characters")
        size = len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
        return value

    @model_validator(mode="after")
    def _what_to_run(self) -> SimulationRequest:
        if (self.command is None) == (self.script is None):
            raise ValueError("give exactly one of 'command' or 'script'")
        return self

    @classmethod
    def parse(cls, data: object) -> SimulationRequest:
        """Validate untrusted data; every rejected value is named in one InvalidRequest."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            errors = [
                FieldError(".".join(str(p) for p in err["loc"]) or "body", err["msg"])
                for err in exc.errors(include_url=False, include_input=False)
            ]
            raise InvalidRequest(errors) from None
        except ValueError as exc:  # e.g. NaN in metadata
            raise InvalidRequest([FieldError("body", str(exc))]) from None

    def digest(self) -> str:
        """A stable fingerprint of the request, to tell an idempotent replay from a new body."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()
