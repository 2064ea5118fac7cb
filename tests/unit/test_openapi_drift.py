"""docs/openapi.json is the document the API serves: regenerate it when the API changes."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from obp_workflow.entrypoints.http.openapi import openapi_json

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
REGENERATE = ".venv/bin/obp-workflow openapi > docs/openapi.json"


def test_the_committed_openapi_document_is_the_one_the_code_serves() -> None:
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else ""
    generated = openapi_json()

    if committed != generated:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    generated.splitlines(keepends=True),
                    "docs/openapi.json (committed)",
                    "docs/openapi.json (from the code)",
                    n=2,
                )
            )[:80]
        )
        raise AssertionError(
            f"docs/openapi.json drifted from the API; regenerate it with:\n\n    {REGENERATE}\n\n"
            f"{diff}"
        )


def test_the_document_declares_every_error_as_a_problem() -> None:
    document = json.loads(openapi_json())
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    content = response["content"]
                    assert list(content) == ["application/problem+json"], (method, path, status)
                    assert content["application/problem+json"]["schema"] == {
                        "$ref": "#/components/schemas/Problem"
                    }
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ResponseValidationError" not in schemas
