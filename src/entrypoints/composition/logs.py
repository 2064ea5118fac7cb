"""The service's logs: ``OBP_LOG_LEVEL``, and one JSON object per line for its processes.

Each way in applies the level once, when it reads its settings (building a container does
not: a process may build several). The Lambdas keep their runtime's handler; the processes
(the worker, ``serve``) write one JSON object per line on stderr (:func:`configure_processes`)
with the time, level, logger and message, and the project, run, state and step wherever one is
in hand (:func:`log_context`).

No secret reaches a line: private keys (PEM blocks), bearer tokens and JWTs are replaced by
``[redacted]`` in every message and traceback, whatever logged them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO

SERVICE_LOGGER = "obp_workflow"
#: The context fields a line carries when they are known, in this order.
CONTEXT_FIELDS = ("project", "run_id", "state", "step")

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("obp_log_context")
_SECRETS = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)"
    r"|(?i:bearer)\s+[A-Za-z0-9\-._~+/]+=*"
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
    re.DOTALL,
)
REDACTED = "[redacted]"


def apply_log_level(level: str) -> None:
    logging.getLogger(SERVICE_LOGGER).setLevel(level)


def redact(text: str) -> str:
    return _SECRETS.sub(REDACTED, text)


@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Lines logged inside carry these fields (and those of the enclosing contexts)."""
    merged = {**_context.get({}), **{k: str(v) for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        context = _context.get({})
        line.update({k: context[k] for k in CONTEXT_FIELDS if k in context})
        if record.exc_info:
            line["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False)


def configure_processes(level: str, stream: IO[str] | None = None) -> None:
    """JSON lines on ``stream`` (stderr) for every logger: the service's at ``level``, the
    libraries' (luigi, paramiko, botocore) at WARNING."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    apply_log_level(level)
