"""``obp-workflow demo``, as a user runs it: a real worker process, a real job, real files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

OBP = Path(sys.executable).with_name("obp-workflow")


def test_the_demo_runs_the_example_to_done_and_shows_what_it_made(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
    env["COLUMNS"] = "250"  # the tables unfolded, one row per line
    done = subprocess.run(
        [str(OBP), "demo", "--home", str(home)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr + out
    run_id = re.search(r"run ([0-9a-f-]{36}) accepted", out)
    assert run_id is not None, out
    folder = home / "cluster" / "runs" / run_id.group(1)
    # The job ran here: its outputs are files of its run folder.
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["neurons"] == 200
    assert summary["spikes"] > 0
    assert f"run {run_id.group(1)} ended DONE" in out
    for state in ("PROVISIONING", "SUBMITTING", "QUEUED", "RUNNING", "SYNCING", "REGISTERING"):
        assert state in out
    # The outputs are shown with the digests of the files the job wrote...
    for name in ("spikes.csv", "summary.json"):
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert f"sha256:{digest}" in out, name
    # ...and the provenance is read back from the local graph.
    assert "WorkflowExecution" in out
    assert "clusterName        local" in out
    assert (home / "graph.sqlite").is_file()


def test_the_demo_refuses_a_request_that_is_not_there(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(OBP), "demo", "--home", str(tmp_path), "--request", str(tmp_path / "none.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"error: no run request at {tmp_path / 'none.json'} (give --request FILE)"
    )


pytestmark = pytest.mark.timeout(240)
