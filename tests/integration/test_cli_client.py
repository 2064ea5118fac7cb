"""The client commands as a person runs them: `obp-workflow submit ... provenance` as processes,
over HTTP, against `obp-workflow serve` on the in-memory adapters with a dev token.

Without a worker the runs stay ACCEPTED until cancelled; the pipeline's moves are the
end-to-end test's. Each test submits runs of its own in the one shared project.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

VLAB, PROJECT = str(uuid.uuid4()), str(uuid.uuid4())
TOKEN = "cli-dev-token"
CLI = str(Path(sys.executable).with_name("obp-workflow"))
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def api_url() -> Iterator[str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
    env["OBP_ADAPTERS"] = "fake"  # runs that do not move: the client's answers are exact
    process = subprocess.Popen(
        [
            *(CLI, "serve", "--port", str(port), "--dev-token", TOKEN),
            *("--dev-groups", f"/proj/{VLAB}/{PROJECT}/member"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v1/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("obp-workflow serve did not answer within 30 s")
        yield url
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def environment(url: str, **changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBP_")}
    env |= {
        "OBP_API_URL": url,
        "OBP_TOKEN": TOKEN,
        "OBP_VIRTUAL_LAB_ID": VLAB,
        "OBP_PROJECT_ID": PROJECT,
    }
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def cli(url: str, *args: str, stdin: str | None = None, **env: str | None) -> Result:
    done = subprocess.run(
        [CLI, *args],
        input=stdin,
        env=environment(url, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def submit(url: str, *args: str) -> str:
    result = cli(url, "submit", *(args or ("--command", "neurodamus --tstop 10")))
    assert result.code == 0, result.err
    run_id = result.out.strip()
    assert UUID.fullmatch(run_id), result.out
    return run_id


def run_json(url: str, run_id: str) -> dict[str, object]:
    result = cli(url, "status", run_id, "--json")
    assert result.code == 0, result.err
    found = result.json()
    assert isinstance(found, dict)
    return found


def one_error_line(result: Result) -> str:
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: ")
    return lines[0]


# ================================================================ submit


def test_submit_sends_a_request_file_and_prints_the_run_id(api_url: str, tmp_path: Path) -> None:
    body = {
        "name": "from a file",
        "command": ["neurodamus", "--configFile=simulation_config.json"],
        "resources": {"nodes": 2, "time_limit_minutes": 30},
        "outputs": ["output/spikes.h5"],
    }
    request = tmp_path / "run.json"
    request.write_text(json.dumps(body), encoding="utf-8")

    run_id = submit(api_url, str(request))

    run = run_json(api_url, run_id)
    assert run["state"] == "ACCEPTED"
    sent = run["request"]
    assert isinstance(sent, dict)
    assert (sent["name"], sent["command"], sent["outputs"]) == (
        body["name"],
        body["command"],
        body["outputs"],
    )
    assert sent["resources"]["nodes"] == 2
    assert sent["resources"]["time_limit_minutes"] == 30


def test_submit_reads_the_request_from_stdin(api_url: str) -> None:
    body = json.dumps({"command": ["from-stdin"], "name": "piped"})

    result = cli(api_url, "submit", "-", stdin=body)

    assert result.code == 0, result.err
    request = run_json(api_url, result.out.strip())["request"]
    assert (request["command"], request["name"]) == (["from-stdin"], "piped")


def test_submit_builds_the_request_from_flags(api_url: str) -> None:
    run_id = submit(
        api_url,
        "--command",
        "neurodamus --tstop 'ten ms'",
        "--nodes",
        "3",
        "--time-limit",
        "15",
        "--output",
        "out/a.h5",
        "--output",
        "out/b.h5",
        "--name",
        "flags",
    )

    request = run_json(api_url, run_id)["request"]
    assert isinstance(request, dict)
    assert request["command"] == ["neurodamus", "--tstop", "ten ms"]
    assert request["resources"]["nodes"] == 3
    assert request["resources"]["time_limit_minutes"] == 15
    assert request["outputs"] == ["out/a.h5", "out/b.h5"]
    assert request["name"] == "flags"


def test_flags_override_the_file(api_url: str, tmp_path: Path) -> None:
    request = tmp_path / "run.json"
    request.write_text(json.dumps({"command": ["a"], "resources": {"nodes": 4}}), "utf-8")

    run_id = submit(api_url, str(request), "--nodes", "1", "--output", "x.h5")

    sent = run_json(api_url, run_id)["request"]
    assert isinstance(sent, dict)
    assert sent["command"] == ["a"]
    assert sent["resources"]["nodes"] == 1
    assert sent["outputs"] == ["x.h5"]


def test_submit_json_prints_the_api_answer(api_url: str) -> None:
    result = cli(api_url, "submit", "--command", "sim", "--json")

    assert result.code == 0, result.err
    run = result.json()
    assert isinstance(run, dict)
    assert run["state"] == "ACCEPTED"
    assert run["request"]["command"] == ["sim"]


def test_an_invalid_request_is_the_apis_422_in_one_line(api_url: str) -> None:
    result = cli(api_url, "submit", "--command", "sim", "--nodes", "0")

    assert result.code == 3
    line = one_error_line(result)
    assert line.startswith("error: 422 Unprocessable Entity: ")
    assert "body.resources.nodes" in line
    assert result.out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "error: give the request as FILE.json, or at least --command"),
        (("--command", ""), "error: --command is empty"),
        (
            ("/no/such/file.json",),
            "error: cannot read /no/such/file.json: No such file or directory",
        ),
    ],
    ids=["nothing", "empty-command", "missing-file"],
)
def test_a_submission_without_a_request_is_a_usage_error(
    api_url: str, args: tuple[str, ...], message: str
) -> None:
    result = cli(api_url, "submit", *args)

    assert result.code == 2
    assert one_error_line(result) == message


# ================================================================ list, status, cancel


def test_list_shows_the_runs_and_pages_through_them(api_url: str) -> None:
    made = [submit(api_url) for _ in range(3)]

    table = cli(api_url, "list", "--limit", "500")
    first = cli(api_url, "list", "--limit", "2", "--json")
    page = first.json()
    assert isinstance(page, dict)
    second = cli(api_url, "list", "--limit", "2", "--cursor", page["next_cursor"], "--json")
    everything = cli(api_url, "list", "--limit", "1", "--all")
    hinted = cli(api_url, "list", "--limit", "1")

    assert table.code == 0, table.err
    for run_id in made:
        assert run_id in table.out
    assert "ACCEPTED" in table.out
    assert "request accepted" in table.out  # the last reason
    newest = [r["run_id"] for r in page["runs"]] + [r["run_id"] for r in second.json()["runs"]]
    assert newest[:3] == made[::-1]
    assert all(run_id in everything.out for run_id in made)
    assert "more: --cursor " in hinted.out
    assert "more:" not in everything.out


def test_status_shows_the_run_and_its_timeline(api_url: str) -> None:
    run_id = submit(api_url, "--command", "sim", "--name", "a status")

    result = cli(api_url, "status", run_id)

    assert result.code == 0, result.err
    assert run_id in result.out
    assert "a status" in result.out
    assert "timeline" in result.out
    assert "request accepted" in result.out


def test_cancel_then_status_shows_cancelled(api_url: str) -> None:
    run_id = submit(api_url)

    cancelled = cli(api_url, "cancel", run_id, "--reason", "wrong parameters")
    again = cli(api_url, "cancel", run_id, "--json")
    status = cli(api_url, "status", run_id)
    listed = cli(api_url, "list", "--state", "cancelled", "--limit", "500", "--json")

    assert cancelled.code == 0, cancelled.err
    assert cancelled.out == f"{run_id}: CANCELLED\n"
    assert again.code == 0
    assert again.json()["state"] == "CANCELLED"
    assert "CANCELLED" in status.out
    assert "wrong parameters" in status.out
    assert run_id in {r["run_id"] for r in listed.json()["runs"]}
    assert {r["state"] for r in listed.json()["runs"]} == {"CANCELLED"}


def test_an_unknown_run_is_the_apis_404_in_one_line(api_url: str) -> None:
    result = cli(api_url, "status", "no-such-run")

    assert result.code == 3
    assert one_error_line(result) == (
        f"error: 404 Not Found: run no-such-run not found in project {VLAB}/{PROJECT}"
    )


# ================================================================ log, outputs, provenance


def test_a_run_without_a_job_has_an_empty_log(api_url: str) -> None:
    run_id = submit(api_url)

    plain = cli(api_url, "log", run_id)
    as_json = cli(api_url, "log", run_id, "--json")

    assert plain.code == 0, plain.err
    assert plain.out == ""
    assert as_json.json() == {"run_id": run_id, "max_bytes": 65536, "text": ""}


def test_log_follow_stops_when_the_run_ends(api_url: str) -> None:
    run_id = submit(api_url)
    cli(api_url, "cancel", run_id)

    result = cli(api_url, "log", run_id, "--follow", "--interval", "0.1")

    assert result.code == 0, result.err
    assert result.out == ""


def test_outputs_of_a_run_that_has_none_yet(api_url: str) -> None:
    run_id = submit(api_url, "--command", "sim", "--output", "out/spikes.h5")

    table = cli(api_url, "outputs", run_id)
    as_json = cli(api_url, "outputs", run_id, "--json")
    cli(api_url, "cancel", run_id)
    after_cancel = cli(api_url, "outputs", run_id)

    assert table.code == 0, table.err
    assert table.out.strip() == "no synchronised outputs yet (the run is ACCEPTED)"
    assert as_json.json() == {"run_id": run_id, "state": "ACCEPTED", "synced": False, "files": []}
    assert after_cancel.out.strip() == "the run ended CANCELLED without synchronised outputs"


def test_provenance_of_a_run_with_nothing_registered_is_a_404(api_url: str) -> None:
    run_id = submit(api_url)

    result = cli(api_url, "provenance", run_id)
    as_json = cli(api_url, "provenance", run_id, "--json")

    assert result.code == 3
    assert one_error_line(result) == (
        f"error: 404 Not Found: run {run_id} has nothing registered in the knowledge graph"
    )
    assert as_json.code == 3
    assert as_json.out == ""


# ================================================================ watch


@pytest.mark.parametrize("how", ["watch", "submit-watch"])
def test_watch_of_a_run_cancelled_elsewhere_exits_1(api_url: str, how: str) -> None:
    if how == "watch":
        run_id = submit(api_url)
        command = [CLI, "watch", run_id, "--interval", "0.1"]
    else:
        command = [CLI, "submit", "--command", "sim", "--watch", "--interval", "0.1"]
    watcher = subprocess.Popen(
        command,
        env=environment(api_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        if how == "submit-watch":
            run_id = watcher.stdout.readline().strip()  # the run's id first
            assert UUID.fullmatch(run_id)
        first = watcher.stdout.readline()  # the run's first change: it is watched
        assert "ACCEPTED" in first
        assert watcher.poll() is None  # still watching
        cancelled = cli(api_url, "cancel", run_id, "--reason", "from elsewhere")
        assert cancelled.code == 0, cancelled.err
        code = watcher.wait(20)
        rest = watcher.stdout.read()
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()

    assert code == 1
    lines = rest.splitlines()
    assert "CANCELLED" in lines[0]
    assert "from elsewhere" in lines[0]
    assert lines[-1].startswith(f"run {run_id} ended CANCELLED after ")


def test_watch_json_prints_the_run_each_time_it_changes(api_url: str) -> None:
    run_id = submit(api_url)
    cli(api_url, "cancel", run_id)

    result = cli(api_url, "watch", run_id, "--json", "--interval", "0.1")

    assert result.code == 1
    [line] = result.out.splitlines()
    assert json.loads(line)["state"] == "CANCELLED"


# ================================================================ settings and reachability


def test_a_bad_token_is_exit_3_in_one_line(api_url: str) -> None:
    result = cli(api_url, "list", OBP_TOKEN="not-the-token")

    assert result.code == 3
    assert one_error_line(result) == "error: 401 Unauthorized: authentication required"
    assert "not-the-token" not in result.err


def test_an_unreachable_api_is_exit_4_in_one_line(api_url: str) -> None:
    nowhere = f"http://127.0.0.1:{_free_port()}"

    result = cli(nowhere, "status", "some-run")

    assert result.code == 4
    assert one_error_line(result).startswith(f"error: cannot reach the API at {nowhere}: ")


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"OBP_API_URL": None}, (), "error: OBP_API_URL is not set (or give --url)"),
        ({"OBP_TOKEN": None}, (), "error: OBP_TOKEN is not set (or give --token)"),
        (
            {"OBP_VIRTUAL_LAB_ID": ""},
            (),
            "error: OBP_VIRTUAL_LAB_ID is not set (or give --vlab)",
        ),
        ({"OBP_PROJECT_ID": None}, (), "error: OBP_PROJECT_ID is not set (or give --project)"),
        (
            {},
            ("--project", "Not-A-Uuid"),
            "error: --project must be a UUID in lower case, not 'Not-A-Uuid'",
        ),
        (
            {"OBP_API_URL": "ftp://example.org"},
            (),
            "error: OBP_API_URL must be the API's http(s) base URL, e.g. https://api.example.org",
        ),
    ],
    ids=["no-url", "no-token", "empty-vlab", "no-project", "bad-project", "bad-url"],
)
def test_a_missing_or_wrong_setting_is_named_with_exit_2(
    api_url: str, env: dict[str, str | None], args: tuple[str, ...], message: str
) -> None:
    result = cli(api_url, "list", *args, **env)

    assert result.code == 2
    assert one_error_line(result) == message


def test_the_flags_stand_in_for_the_environment(api_url: str) -> None:
    run_id = submit(api_url)
    unset = {"OBP_API_URL": None, "OBP_TOKEN": None}
    unset |= {"OBP_VIRTUAL_LAB_ID": None, "OBP_PROJECT_ID": None}

    result = cli(
        api_url,
        "status",
        run_id,
        "--json",
        *("--url", api_url, "--token", TOKEN, "--vlab", VLAB, "--project", PROJECT),
        **unset,
    )

    assert result.code == 0, result.err
    assert result.json()["run_id"] == run_id


def test_wrong_usage_is_argparses_exit_2(api_url: str) -> None:
    result = cli(api_url, "watch")

    assert result.code == 2
    assert "usage: obp-workflow watch" in result.err


def test_ctrl_c_ends_a_watch_quietly_with_130(api_url: str) -> None:
    run_id = submit(api_url)
    watcher = subprocess.Popen(
        [CLI, "watch", run_id, "--interval", "0.1"],
        env=environment(api_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        assert "ACCEPTED" in watcher.stdout.readline()
        watcher.send_signal(signal.SIGINT)
        code = watcher.wait(10)
        assert watcher.stderr is not None
        err = watcher.stderr.read()
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()

    assert code == 130
    assert "Traceback" not in err
