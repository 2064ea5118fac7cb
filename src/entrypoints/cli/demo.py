"""``obp-workflow demo``: the service's main job on one machine, for real.

In a fresh ``OBP_HOME`` (a new temporary folder, kept afterwards to look at) it starts the
embedded service as ``serve`` does (the API behind the local gateway, the local token issuer),
mints a token for a member of the demo project, submits the example simulation (a network of
leaky integrate-and-fire neurons in plain Python, ``examples/lif-network.json``) over HTTP and
follows it with ``watch`` while the project's worker process drives it: a real job on the
``local`` cluster (a process of this machine) or, with ``--cluster ssh-slurm``, on the Slurm
cluster the ``OBP_SLURM_*`` settings name. Then it prints the timeline, the outputs with their
digests and the provenance read back from the local graph, with the very client commands a user
types.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from obp_workflow.entrypoints.composition.settings import Settings

#: The command line's entry point, called in process (``main``).
Command = Callable[[Sequence[str] | None], int]

DEMO_VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
DEMO_PROJECT = "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20"
#: The example in a checkout (``pip install -e .``); elsewhere give ``--request``.
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "lif-network.json"


def demo(cluster: str = "local", request: Path | None = None, home: Path | None = None) -> int:
    """Run the example to its end; 0 when it is DONE."""
    from obp_workflow.adapters.local.token_issuer import mint_token
    from obp_workflow.entrypoints.composition.logs import apply_log_level
    from obp_workflow.entrypoints.composition.settings import SettingsError, load_settings

    from .errors import problem_lines
    from .main import main as command
    from .serve import start

    started = time.monotonic()
    request = request or EXAMPLE
    if not request.is_file():
        print(f"error: no run request at {request} (give --request FILE)", file=sys.stderr)
        return 2
    home = home or Path(tempfile.mkdtemp(prefix="obp-workflow-demo-"))
    # The worker processes the service starts read their settings from the environment.
    os.environ.update(
        OBP_ADAPTERS="local",
        OBP_HOME=str(home),
        OBP_LOCAL_CLUSTER=cluster,
        OBP_WORKER_POLL_SECONDS=os.environ.get("OBP_WORKER_POLL_SECONDS", "0.25"),
        OBP_WORKER_IDLE_MINUTES=os.environ.get("OBP_WORKER_IDLE_MINUTES", "1"),
        OBP_LOG_LEVEL=os.environ.get("OBP_LOG_LEVEL", "WARNING"),
    )
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(*problem_lines(exc), sep="\n", file=sys.stderr)
        return 2
    apply_log_level(settings.log_level)
    try:
        running = start(settings, port=0)
    except (OSError, ValueError) as exc:
        print(*problem_lines(exc), sep="\n", file=sys.stderr)
        return 2
    try:
        assert running.issuer is not None
        token = mint_token(
            home,
            running.issuer.issuer,
            [f"/proj/{DEMO_VLAB}/{DEMO_PROJECT}/member"],
            username=getpass.getuser(),
        )
        where = [
            "--url", running.url, "--token", token, "--vlab", DEMO_VLAB, "--project", DEMO_PROJECT,
        ]  # fmt: skip
        print(f"obp-workflow demo: the service on {running.url}, state in {home}")
        print(f"cluster: {_cluster_text(settings.local_cluster)}")
        print(f"submitting {request.name}: {json.loads(request.read_text())['name']}\n")
        run_id = _submit(command, where, request)
        if run_id is None:
            return 1
        outcome = command(["watch", run_id, "--interval", "0.25", *where])
        for shown in (["status", run_id], ["outputs", run_id], ["provenance", run_id]):
            print()
            command([*shown, *where])
        print(f"\nthe demo took {time.monotonic() - started:.1f} s; its state stays in {home}")
        print(f"the job's folder: {_run_folder(settings, run_id)}")
        return outcome
    finally:
        running.close()


def _submit(command: Command, where: Sequence[str], request: Path) -> str | None:
    """Submit through the command line, reading the run id it prints."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = command(["submit", str(request), *where])
    text = out.getvalue().strip()
    if code != 0 or not text:
        print(text, file=sys.stderr)
        return None
    run_id = text.splitlines()[-1].strip()
    print(f"run {run_id} accepted")
    return run_id


def _cluster_text(cluster: str) -> str:
    if cluster == "ssh-slurm":
        return "ssh-slurm: the Slurm cluster named by OBP_SLURM_HOST, over SSH"
    return "local: jobs are processes of this machine"


def _run_folder(settings: Settings, run_id: str) -> str:
    from obp_workflow.entrypoints.composition.local import cluster_handle

    return cluster_handle(settings).run_folder(run_id)
