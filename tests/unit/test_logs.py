"""The processes' log lines: one JSON object each, with the run's context, no secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from obp_workflow.entrypoints.composition.logs import (
    REDACTED,
    configure_processes,
    log_context,
    redact,
)

PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJlLWJ5dGVz"


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_processes("DEBUG", stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)


def read(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_each_line_is_one_json_object_with_the_runs_context(lines: io.StringIO) -> None:
    log = logging.getLogger("obp_workflow.worker")
    log.info("outside")
    with log_context(project="v/p", run_id="r-1"), log_context(state="QUEUED", step="Submit"):
        log.info("inside %s", "a step")

    outside, inside = read(lines)
    assert set(outside) == {"time", "level", "logger", "message"}
    assert inside["message"] == "inside a step"
    assert (inside["project"], inside["run_id"], inside["state"], inside["step"]) == (
        "v/p",
        "r-1",
        "QUEUED",
        "Submit",
    )
    assert inside["level"] == "INFO"
    assert inside["logger"] == "obp_workflow.worker"


def test_libraries_log_warnings_only_and_the_service_at_its_level(lines: io.StringIO) -> None:
    logging.getLogger("luigi-interface").info("chatter")
    logging.getLogger("luigi-interface").warning("a problem")
    logging.getLogger("obp_workflow.x").debug("detail")

    assert [line["message"] for line in read(lines)] == ["a problem", "detail"]


@pytest.mark.parametrize(
    "secret",
    [PEM, f"Bearer {JWT}", JWT, "bearer abc.def-ghi_jkl"],
    ids=["private-key", "bearer-jwt", "jwt", "bearer-opaque"],
)
def test_no_key_or_token_reaches_a_line(lines: io.StringIO, secret: str) -> None:
    log = logging.getLogger("obp_workflow.adapters.x")
    log.warning("refused with %s here", secret)
    try:
        raise ValueError(f"failed: {secret}")
    except ValueError:
        log.exception("a failure")

    text = lines.getvalue()
    for part in secret.replace("\n", " ").split():
        if len(part) > 12:
            assert part not in text
    assert text.count(REDACTED) >= 2


def test_redaction_keeps_what_is_not_a_secret() -> None:
    assert redact("job 42 of run obp-123 failed: exit 3") == "job 42 of run obp-123 failed: exit 3"
