"""Write ``examples/lif-network.json``: the run request that runs ``network.py`` on a cluster.

A run request names a command or carries a bash script (``script``, up to 64 KiB), which the
service writes into the run folder and runs there. The script below carries ``network.py``
whole, in a quoted here-document (nothing in it is expanded by the shell), writes it into the run
folder and runs it there: the request needs nothing installed on the cluster but ``python3``.

    python3 examples/lif-network/make_request.py      # after a change to network.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUEST = HERE.parent / "lif-network.json"
END = "OBP_LIF_NETWORK_PY"


def request() -> dict[str, object]:
    code = (HERE / "network.py").read_text(encoding="utf-8")
    if END in code.splitlines():
        raise SystemExit(f"network.py must not hold a line {END!r}: it ends the here-document")
    script = "\n".join(
        [
            "#!/bin/bash",
            "# The LIF network example: the simulation's code travels inside this script.",
            "set -eu",
            f"cat > network.py <<'{END}'",
            code.rstrip("\n"),
            END,
            "python3 network.py --out .",
            "",
        ]
    )
    return {
        "kind": "simulation",
        "name": "LIF network: 200 neurons, 10 s",
        "script": script,
        "resources": {
            "nodes": 1,
            "tasks_per_node": 1,
            "cpus_per_task": 1,
            "time_limit_minutes": 5,
        },
        "outputs": ["spikes.csv", "summary.json"],
        "metadata": {"example": "lif-network", "neurons": 200, "seed": 20260301},
    }


if __name__ == "__main__":
    REQUEST.write_text(json.dumps(request(), indent=2) + "\n", encoding="utf-8")
    print(f"wrote {REQUEST}")
