"""What a command that cannot do its work answers: one line on stderr, and an exit code."""

from __future__ import annotations

#: The exit codes of the command line.
OK = 0
RUN_NOT_DONE = 1  # the watched run ended FAILED or CANCELLED
USAGE = 2  # wrong arguments or settings (argparse exits 2 too)
API_ERROR = 3  # the API answered 4xx or 5xx
UNREACHABLE = 4  # the API could not be reached


class CommandError(Exception):
    """Printed as ``error: MESSAGE``; the process exits with ``code``. ``transient``: worth
    asking again (the API unavailable or unreachable), for commands that keep polling."""

    def __init__(self, message: str, code: int, *, transient: bool = False) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())  # always one line
        self.code = code
        self.transient = transient


def problem_lines(exc: Exception) -> list[str]:
    """What a settings error says, one ``error: ...`` line per problem (a message made of a
    heading ending with ':' and one indented line per problem is split into those lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    return [f"error: {line}" for line in lines] or [f"error: {type(exc).__name__}"]
