"""The client commands' pure parts: where a run is in its pipeline (what `watch` draws), what
a log poll adds, an API error as one line, and what the command line loads to start."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from rich.console import Console

from obp_workflow.entrypoints.cli.client import problem_line
from obp_workflow.entrypoints.cli.display import provenance_view, watch_view
from obp_workflow.entrypoints.cli.results import new_text
from obp_workflow.entrypoints.cli.steps import (
    STEPS,
    current_step,
    duration,
    elapsed,
    job_text,
    steps,
)

T0 = "2030-01-01T12:00:00Z"


def view(state: str, *path: str, sync_job: str | None = None, **job: Any) -> dict[str, Any]:
    """A run as the API shows it, that went through ``path`` to ``state``."""
    states = [*path, state] if path else [state]
    timeline = [
        {"to_state": s, "from_state": prev, "reason": f"to {s}"}
        for prev, s in zip([None, *states], states, strict=False)
    ]
    return {
        "run_id": "r-1",
        "state": state,
        "terminal": state in ("DONE", "FAILED", "CANCELLED"),
        "stale": None,
        "created_at": T0,
        "updated_at": "2030-01-01T12:01:05Z",
        "job": {"job_id": None, "cluster_name": None, "exit_code": None, "signal": None} | job,
        "sync": {"job_id": sync_job, "kind": None},
        "timeline": timeline,
    }


def marks(run: dict[str, Any]) -> list[str]:
    return [s.status for s in steps(run)]


@pytest.mark.parametrize(
    ("state", "sync_job", "current"),
    [
        ("ACCEPTED", None, "Provision"),
        ("PROVISIONING", None, "Provision"),
        ("SUBMITTING", None, "Submit"),
        ("QUEUED", None, "AwaitJob"),
        ("RUNNING", None, "AwaitJob"),
        ("SYNCING", None, "Sync"),
        ("SYNCING", "77", "AwaitSync"),
        ("REGISTERING", None, "Register"),
    ],
)
def test_an_active_run_is_at_the_step_of_its_state(
    state: str, sync_job: str | None, current: str
) -> None:
    run = view(state, sync_job=sync_job)

    at = STEPS.index(current)
    assert marks(run) == ["done"] * at + ["current"] + ["pending"] * (len(STEPS) - at - 1)
    assert current_step(run) == current


def test_a_done_run_has_done_every_step() -> None:
    run = view("DONE", "ACCEPTED", "PROVISIONING", "SUBMITTING", "QUEUED", "RUNNING")

    assert marks(run) == ["done"] * len(STEPS)
    assert current_step(run) is None


def test_an_ended_run_marks_the_step_it_had_reached() -> None:
    failed = view("FAILED", "ACCEPTED", "PROVISIONING", "SUBMITTING", "QUEUED", "RUNNING")
    cancelled_early = view("CANCELLED", "ACCEPTED")
    cancelling = view("CANCELLING", "ACCEPTED", "PROVISIONING", "SUBMITTING", "QUEUED")

    assert marks(failed) == ["done", "done", "failed", "pending", "pending", "pending"]
    assert marks(cancelled_early)[0] == "cancelled"
    assert marks(cancelling)[:3] == ["done", "done", "cancelling"]
    assert current_step(failed) == "AwaitJob"


def test_the_job_is_described_by_the_runs_state() -> None:
    assert job_text(view("ACCEPTED")) == "no job yet"
    assert job_text(view("QUEUED", job_id="42", cluster_name="pc")) == "job 42 on pc: QUEUED"
    ended = view("SYNCING", sync_job="43", job_id="42", exit_code=0)
    assert job_text(ended) == "job 42: ended, exit code 0; sync job 43"
    stale = view("RUNNING", job_id="42") | {"stale": {"since": T0, "reason": "x"}}
    assert job_text(stale).endswith("(the cluster does not answer)")


def test_elapsed_runs_until_now_and_stops_when_the_run_ends() -> None:
    now = datetime(2030, 1, 1, 12, 10, tzinfo=UTC)

    assert elapsed(view("RUNNING"), now) == 600
    assert elapsed(view("DONE"), now) == 65
    assert [duration(s) for s in (0, 59, 65, 3600 + 120)] == ["0s", "59s", "1m05s", "1h02m"]


@pytest.mark.parametrize(
    ("seen", "text", "added", "gap"),
    [
        ("", "", "", False),
        ("", "hello\n", "hello\n", False),
        ("a\nb\n", "a\nb\nc\n", "c\n", False),
        ("a\nb\n", "a\nb\n", "", False),
        ("abcdef", "defghi", "ghi", False),  # the window slid: what both hold is printed once
        ("x\nx\n", "x\nx\nx\n", "x\n", False),  # repeated lines
        ("abc", "xyz", "xyz", True),  # more than the window went by
    ],
)
def test_a_log_poll_adds_only_what_was_not_seen(
    seen: str, text: str, added: str, gap: bool
) -> None:
    assert new_text(seen, text) == (added, gap)


def answer(status: int, body: object, content_type: str = "application/problem+json") -> str:
    content = body if isinstance(body, str) else json.dumps(body)
    return problem_line(
        httpx.Response(status, content=content, headers={"content-type": content_type})
    )


def test_an_api_error_is_one_line_from_its_problem_document() -> None:
    assert (
        answer(404, {"type": "t", "title": "Not found", "status": 404, "detail": "run x not found"})
        == "404 Not Found: run x not found"
    )
    validation = {
        "title": "Invalid request",
        "detail": "invalid request",
        "errors": [{"field": "body.x", "rule": "is bad"}, {"field": "query.y", "rule": "no"}],
    }
    assert (
        answer(422, validation) == "422 Unprocessable Entity: invalid request (body.x: is bad; "
        "query.y: no)"
    )
    assert answer(401, {"message": "Unauthorized"}, "application/json") == (
        "401 Unauthorized: Unauthorized"
    )  # API Gateway's own answer
    assert answer(502, "<html>\n<b>Bad gateway</b>\n</html>", "text/html") == (
        "502 Bad Gateway: <html> <b>Bad gateway</b> </html>"
    )
    assert answer(500, "", "text/plain") == "500 Internal Server Error"


def test_the_command_line_loads_neither_httpx_nor_rich_to_start() -> None:
    code = (
        "import json, sys\n"
        "from obp_workflow.entrypoints.cli.main import parser\n"
        "parser().parse_args(['worker'])\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = set(json.loads(out.stdout))

    heavy = ("httpx", "rich", "pydantic", "dependency_injector", "boto3", "luigi")
    assert {m for m in modules if m.split(".")[0] in heavy} == set()


# ================================================================ what the tables show


def rendered(renderable: object) -> str:
    console = Console(width=240, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


NEXUS_ENTITY = {
    "@id": "https://o/runs/r-1/outputs/output/spikes.h5",
    "@type": ["Entity", "Dataset"],
    "name": "spikes.h5",
    "relativePath": "output/spikes.h5",
    "distribution": {
        "contentSize": {"unitCode": "bytes", "value": 3 * 1024 * 1024},
        "contentUrl": "https://nexus/v1/files/o/p/f",
        "atLocation": {"@type": "Location", "location": "s3://nexus-data/r-1/spikes.h5"},
    },
}
FAKE_ENTITY = {"@id": "https://o/runs/r-1/outputs/a.h5", "location": "s3://b/a.h5", "size": 10}


def test_provenance_shows_the_activity_in_brief_and_each_entity() -> None:
    document = {
        "run_id": "r-1",
        "activity_id": "https://o/runs/r-1",
        "revision": 3,
        "withdrawn": True,
        "activity": {
            "@context": "https://ctx",
            "@id": "https://o/runs/r-1",
            "@type": ["Activity", "WorkflowExecution"],
            "status": "Done",
            "jobId": "4242",
            "exitCode": 0,
            "wasAttributedTo": {"@id": "https://users/ada", "name": "ada"},
            "used": [{"@id": "https://o/runs/r-1/configuration", "kind": "simulation"}],
            "generated": ["https://o/runs/r-1/outputs/output/spikes.h5"],
            "_rev": 3,
        },
        "entities": [NEXUS_ENTITY, FAKE_ENTITY],
    }

    text = rendered(provenance_view(document))

    assert "Activity, WorkflowExecution" in text
    assert "4242" in text
    assert "ada" in text
    assert "withdrawn" in text
    assert "https://ctx" not in text  # left to --json
    assert "configuration" not in text
    assert "output/spikes.h5" in text
    assert "3.0 MiB" in text
    assert "s3://nexus-data/r-1/spikes.h5" in text
    assert "10 B" in text
    assert "s3://b/a.h5" in text


def test_the_live_view_shows_the_steps_the_job_and_the_last_reason() -> None:
    run = view("RUNNING", "ACCEPTED", "PROVISIONING", "SUBMITTING", "QUEUED", job_id="42")

    text = rendered(watch_view(run, datetime(2030, 1, 1, 12, 2, 3, tzinfo=UTC)))

    assert "r-1" in text
    assert "2m03s" in text
    assert all(step in text for step in STEPS)
    assert "job: job 42: RUNNING" in text
    assert "last: to RUNNING" in text
    assert text.count("✓") == 2  # Provision and Submit
