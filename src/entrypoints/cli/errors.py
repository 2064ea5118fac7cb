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
