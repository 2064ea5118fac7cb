"""``OBP_LOG_LEVEL``: the level of the service's own loggers (``obp_workflow.*``).

Each way in applies it once, when it reads its settings (building a container does not: a
process may build several). Only the level is set here; where the lines go is the host's
business (the Lambda runtime's handler, or the process's).
"""

from __future__ import annotations

import logging

SERVICE_LOGGER = "obp_workflow"


def apply_log_level(level: str) -> None:
    logging.getLogger(SERVICE_LOGGER).setLevel(level)
