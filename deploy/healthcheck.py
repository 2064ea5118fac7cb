"""The workflow container's health check: the worker's luigid answers a scheduler call on
loopback (``OBP_LUIGID_PORT``, 8082 by default). Exit 0 when healthy, else 1 with one line.

The worker starts luigid before anything else and stops it when it stops, so a scheduler that
answers means the worker process is up. The image runs it as ``python <this file>``
(``HEALTHCHECK`` in deploy/Dockerfile, ``HealthCheck`` of the task definition).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request

TIMEOUT_SECONDS = 3.0


def main() -> int:
    port = os.environ.get("OBP_LUIGID_PORT", "8082").strip() or "8082"
    if not port.isdigit() or not 0 < int(port) < 65536:
        print(f"unhealthy: OBP_LUIGID_PORT={port!r} names no port to check", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{int(port)}/api/resource_list"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as answer:
            body = json.loads(answer.read())
    except (OSError, ValueError) as exc:
        print(f"unhealthy: luigid on 127.0.0.1:{port}: {exc}", file=sys.stderr)
        return 1
    if not isinstance(body, dict) or "response" not in body:
        print(f"unhealthy: luigid on 127.0.0.1:{port} answered {str(body)[:200]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
