"""The one-machine service as the README has a user run it, each command a process of an
unprivileged user: ``obp-workflow serve`` in one, then ``token``, ``submit``, ``watch``,
``status``, ``outputs``, ``provenance`` and ``cancel`` in others; a restart of ``serve`` while a
job runs; settings that are wrong or missing."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.local_service import EXAMPLE, Service, service
from tests.local_user import USER, AsUser, processes_in, unprivileged, user_folder

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def user() -> Iterator[AsUser]:
    user = unprivileged()
    yield user
    if user.name == USER:  # every process of the test user is gone (zombies wait for init)
        left = [_cmdline(p) or str(p) for p in _processes_of_uid(user.uid) if _alive(p)]
        assert left == [], f"processes of {USER} left: {left}"


@pytest.fixture
def served(user: AsUser) -> Iterator[Service]:
    with service(user) as running:
        running.serve()
        running.log_in()
        yield running


def _longer(service: Service, seconds_of_network: int) -> Path:
    """The example, simulating longer, with a second process in its group (``sleep``)."""
    body = json.loads(EXAMPLE.read_text())
    script = body["script"]
    assert script.endswith("python3 network.py --out .\n")
    body["script"] = script.replace(
        "python3 network.py --out .\n",
        f"sleep 600 &\npython3 network.py --out . --duration-ms {seconds_of_network * 1000}\n",
    )
    path = service.folder / "longer.json"
    path.write_text(json.dumps(body))
    os.chown(path, service.user.uid, service.user.gid)
    return path


def test_serve_then_submit_and_watch_run_the_example_to_done(served: Service) -> None:
    run_id = served.submit()
    watched = served.cli("watch", run_id, timeout=120)
    assert watched.returncode == 0, watched.stderr + watched.stdout
    assert f"run {run_id} ended DONE" in watched.stdout
    for state in ("PROVISIONING", "SUBMITTING", "QUEUED", "RUNNING", "SYNCING", "REGISTERING"):
        assert state in watched.stdout, state

    # The job ran as the user, in the user's OBP_HOME.
    folder = served.run_folder(run_id)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["neurons"] == 200
    assert summary["spikes"] > 0
    assert (folder / "summary.json").stat().st_uid == served.user.uid

    status = served.ok("status", run_id)
    assert "DONE" in status
    assert "REGISTERING" in status
    outputs = served.ok("outputs", run_id)
    for name in ("spikes.csv", "summary.json"):
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        assert f"sha256:{digest}" in outputs, outputs
    provenance = served.ok("provenance", run_id)
    assert "WorkflowExecution" in provenance
    assert "clusterName        local" in provenance
    listed = served.ok("list")
    assert run_id in listed


def test_cancel_stops_the_whole_process_group_of_the_job(served: Service) -> None:
    run_id = served.submit(_longer(served, 600))
    run = served.wait_for(run_id, "RUNNING")
    job = served.live_record(run["job"]["job_id"])
    group = int(job["job_pgid"])
    members = _group(group)
    names = {_name(pid) for pid in members}
    assert {"python3", "sleep"} <= names, names

    said = served.ok("cancel", run_id, "--reason", "enough")
    assert run_id in said
    watched = served.cli("watch", run_id, timeout=60)
    assert watched.returncode == 1, watched.stderr + watched.stdout
    assert f"run {run_id} ended CANCELLED" in watched.stdout
    assert served.run(run_id)["state"] == "CANCELLED"
    assert [pid for pid in members if _alive(pid)] == [], "the job's processes live on"
    assert _group(group) == []


def test_a_restart_of_serve_while_the_job_runs_loses_nothing(user: AsUser) -> None:
    with service(user) as running:
        running.serve()
        port = int(running.url.rsplit(":", 1)[1])
        running.log_in()
        run_id = running.submit(_longer(running, 30))
        run = running.wait_for(run_id, "RUNNING")
        group = int(running.live_record(run["job"]["job_id"])["job_pgid"])

        assert running.stop() == 0
        # serve stopped its worker; the job, detached, runs on.
        assert _group(group) != [], "the job ended with serve"
        assert all("worker" not in _cmdline(p) for p in _processes_of(running))

        running.serve(port)  # the same address: the issuer of the token is the same
        resumed = f"worker of project {running.vlab}/{running.project}: RUNNING"
        assert running.log.read_text().count(resumed) == 1, running.log.read_text()
        watched = running.cli("watch", run_id, timeout=120)
        assert watched.returncode == 0, watched.stderr + watched.stdout
        done = running.run(run_id)
        assert done["state"] == "DONE"
        assert done["job"]["job_id"] == run["job"]["job_id"]
        assert [r["job_id"] for r in running.job_records()] == [run["job"]["job_id"]]
        assert f"job {run['job']['job_id']} on local" in running.ok("status", run_id)
        summary = json.loads((running.run_folder(run_id) / "summary.json").read_text())
        assert summary["duration_ms"] == 30000


def test_serve_names_the_missing_slurm_host_in_one_line(user: AsUser) -> None:
    with user_folder(user) as folder:
        env = user.env(
            folder,
            OBP_HOME=str(folder / "obp-home"),
            OBP_LOCAL_CLUSTER="ssh-slurm",
            OBP_SLURM_USER="obpsim",
            OBP_SLURM_KEY_FILE=str(folder / "key"),
            OBP_SLURM_HOST_KEY="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA",
        )
        done = user.run(["obp-workflow", "serve", "--port", "0"], env)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "OBP_SLURM_HOST" in lines[0]
    assert "OBP_SLURM_USER" not in lines[0]


def test_serve_and_token_name_an_obp_home_that_is_a_file(user: AsUser) -> None:
    with user_folder(user) as folder:
        home = folder / "not-a-folder"
        home.write_text("")
        os.chown(home, user.uid, user.gid)
        env = user.env(folder, OBP_HOME=str(home))
        for argv in (
            ["serve", "--port", "0"],
            ["token", "--group", "/proj/v/p/member"],
        ):
            done = user.run(["obp-workflow", *argv], env)
            assert done.returncode == 2, argv
            lines = done.stderr.splitlines()
            assert len(lines) == 1, done.stderr
            assert lines[0].startswith("error: OBP_HOME"), lines[0]
            assert str(home) in lines[0]


# ==================================================================== processes


def _group(pgid: int) -> list[int]:
    """The live processes of a process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return bool(stat) and stat[0] not in ("Z", "X")


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _processes_of_uid(uid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == uid]


def _owner(entry: Path) -> int | None:
    try:
        return entry.stat().st_uid
    except OSError:
        return None


def _processes_of(running: Service) -> list[int]:
    return processes_in(running.folder)
