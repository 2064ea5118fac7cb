"""The one-machine service with the ``ssh-slurm`` cluster: the same commands as a user types
them, pointed at the test stack's Slurm (``OBP_LOCAL_CLUSTER=ssh-slurm``, ``OBP_SLURM_*``), run a
real Slurm job to DONE; and ``make demo-slurm`` (``obp-workflow demo --cluster ssh-slurm`` with
the stack's settings) does too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.local_service import Service, service
from tests.local_user import REPO, AsUser, stop_everything_in, unprivileged
from tests.stack import STACK_DIR, accounted, stack

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def user() -> AsUser:
    return unprivileged()


@pytest.fixture
def on_slurm(user: AsUser) -> Iterator[Service]:
    peers = stack()
    with service(user) as running:
        # The user's own copy of the cluster login's key (the stack's is root's alone).
        key = running.folder / "obpsim_ed25519"
        shutil.copyfile(Path(peers.raw["users"]["sim"]["private_key"]), key)
        key.chmod(0o600)
        os.chown(key, user.uid, user.gid)
        running.settings.update(
            OBP_LOCAL_CLUSTER="ssh-slurm",
            OBP_SLURM_HOST=peers.host,
            OBP_SLURM_PORT=str(peers.port),
            OBP_SLURM_USER=peers.user("sim"),
            OBP_SLURM_KEY_FILE=str(key),
            OBP_SLURM_HOST_KEY=peers.host_key,
        )
        running.serve()
        running.log_in()
        yield running


def test_the_client_commands_run_a_real_slurm_job_to_done(on_slurm: Service) -> None:
    run_id = on_slurm.submit()
    watched = on_slurm.cli("watch", run_id, timeout=240)
    assert watched.returncode == 0, watched.stderr + watched.stdout
    assert f"run {run_id} ended DONE" in watched.stdout

    run = on_slurm.run(run_id)
    job_id = run["job"]["job_id"]
    assert run["job"]["cluster_name"] == "ssh-slurm"
    # Slurm itself ran it, as the cluster's login, to its end.
    assert accounted(job_id, f"obp-{run_id}") == ("COMPLETED", stack().user("sim"))
    assert f"job {job_id} on ssh-slurm" in on_slurm.ok("status", run_id)
    outputs = on_slurm.ok("outputs", run_id)
    assert re.search(r"summary\.json .*sha256:[0-9a-f]{64}", outputs), outputs
    assert "spikes.csv" in outputs
    provenance = on_slurm.ok("provenance", run_id)
    assert "WorkflowExecution" in provenance
    assert "clusterName        ssh-slurm" in provenance
    summary = json.loads(on_slurm.ok("outputs", run_id, "--json"))
    assert {f["path"] for f in summary["files"]} >= {"spikes.csv", "summary.json"}


def test_make_demo_slurm_runs_the_example_on_the_stack(tmp_path: Path) -> None:
    assert (STACK_DIR / "stack.env").is_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
    env.update(TMPDIR=str(tmp_path), COLUMNS="250")  # the demo's OBP_HOME under tmp_path
    done = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO), "demo-slurm"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr + out
    run_id = re.search(r"run ([0-9a-f-]{36}) accepted", out)
    assert run_id is not None, out
    assert f"run {run_id.group(1)} ended DONE" in out
    assert "cluster: ssh-slurm" in out
    assert "clusterName        ssh-slurm" in out
    assert re.search(r"summary\.json .*sha256:[0-9a-f]{64}", out), out
    left = stop_everything_in(tmp_path)  # the demo stopped its workers as it ended
    assert left == [], f"the demo left processes behind: {left}"
