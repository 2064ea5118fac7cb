"""The API's OpenAPI document, generated from the routes on first demand.

It is committed as ``docs/openapi.json`` (``obp-workflow openapi > docs/openapi.json``); a test
fails when the two drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from .models import PROBLEM_JSON
from .resolver import PROBLEM_DESCRIPTIONS, app

API_TITLE = "OBP Workflow Service"
API_VERSION = "1.0.0"

_document: list[str] = []


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document, as committed in ``docs/openapi.json``."""
    result: dict[str, Any] = json.loads(openapi_json())
    return result


def openapi_json() -> str:
    """The OpenAPI document as text; generated once per warm environment, on first demand."""
    if not _document:
        from . import routes  # noqa: F401  (the routes register themselves)

        _document.append(_generate_openapi())
    return _document[0]


def _generate_openapi() -> str:
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer

    doc: dict[str, Any] = json.loads(
        app.get_openapi_json_schema(
            title=API_TITLE,
            version=API_VERSION,
            description=(
                "Runs simulations on each Virtual Lab project's HPC cluster and registers their "
                "results in the knowledge graph. Errors are RFC 9457 problems whose `type` is "
                "stable per kind of error."
            ),
            security_schemes={"bearerAuth": HTTPBearer(bearerFormat="JWT")},
        )
    )
    # Powertools declares its own 500 (response validation) on every operation: ours is a
    # Problem like every other error.
    schemas = doc.get("components", {}).get("schemas", {})
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            operation["responses"]["500"] = {
                "description": PROBLEM_DESCRIPTIONS[500],
                "content": {PROBLEM_JSON: {"schema": problem_ref}},
            }
    # ... and its validation error shapes, replaced by Problem, go when nothing refers to them.
    for unused in ("ResponseValidationError", "HTTPValidationError", "ValidationError"):
        others = {k: v for k, v in schemas.items() if k != unused}
        text = json.dumps([doc.get("paths"), others])
        if f'"#/components/schemas/{unused}"' not in text:
            schemas.pop(unused, None)
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
