"""The Lambda package (``make package``: deploy/package.py): within Lambda's size limits, built
for the runtime (CPython 3.12, x86_64 manylinux binaries, 3.12 bytecode), without development
packages, and both handlers answer from it under a CPython 3.12 that sees nothing else.

The package is built once and reused while pyproject.toml, src/ and the script are unchanged
(``build/lambda.zip.key``): the first run of this module takes a build (about 20 s, wheels
from the package registry), later ones read it.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from tests.deploy_template import REPO

#: Distributions of the dev extra and what only they bring (none may be in the package).
DEV_ONLY = (
    "pytest",
    "hypothesis",
    "ruff",
    "mypy",
    "moto",
    "schemathesis",
    "cfn_lint",
    "import_linter",
    "hadolint",
    "boto3_stubs",
    "werkzeug",
    "yaml",
)


def _package_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_package", REPO / "deploy" / "package.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PACKAGE = _package_module()


@pytest.fixture(scope="module")
def package() -> Path:
    path: Path = PACKAGE.ensure()
    return path


@pytest.fixture(scope="module")
def names(package: Path) -> list[str]:
    with zipfile.ZipFile(package) as archive:
        return archive.namelist()


def test_the_package_is_within_lambdas_limits(package: Path) -> None:
    zipped, unzipped, _ = PACKAGE.sizes()
    assert zipped == package.stat().st_size
    assert zipped < 50 * 1024 * 1024, f"{zipped / 1024**2:.1f} MB zipped"
    assert unzipped < 250 * 1024 * 1024, f"{unzipped / 1024**2:.1f} MB unzipped"


def test_a_current_package_is_not_built_again(package: Path) -> None:
    before = package.stat().st_mtime_ns
    assert PACKAGE.ensure() == package
    assert package.stat().st_mtime_ns == before
    assert PACKAGE.KEY.read_text().strip() == PACKAGE.source_key()


def test_the_package_is_built_for_the_lambda_runtime(names: list[str]) -> None:
    for handler in ("api", "authorizer"):
        assert f"obp_workflow/entrypoints/aws_lambda/{handler}.py" in names
        assert f"obp_workflow/entrypoints/aws_lambda/__pycache__/{handler}.cpython-312.pyc" in names
    binaries = [n for n in names if n.endswith(".so")]
    assert any(n.startswith("pydantic_core/") for n in binaries)
    for name in binaries:
        assert re.search(r"\.(cpython-312-x86_64-linux-gnu|abi3)\.so$", name), name
    assert not [n for n in names if n.endswith(".pyc") and ".cpython-312" not in n]


def test_the_package_holds_no_development_package(names: list[str]) -> None:
    tops = {n.split("/", 1)[0] for n in names}
    found = {
        top
        for top in tops
        for dev in DEV_ONLY
        if top == dev
        or top.lower().startswith(dev.replace("_", "-") + "-")
        or top.lower().startswith(dev + "-")
    }
    assert not found, found
    assert not tops & {"tests", "bin", "bench", "deploy"}
    assert any(t.startswith("obp_workflow-") and t.endswith(".dist-info") for t in tops)


PROBE = """
import json, sys
sys.path[:0] = [sys.argv[1]]
from obp_workflow.entrypoints.aws_lambda import api, authorizer
event = {"type": "REQUEST", "methodArn": "arn:aws:execute-api:r:1:a/s/GET/v1/x",
         "headers": {"Authorization": "Bearer unknown"}}
try:
    authorizer.handler(event, None)
    refused = False
except Exception as exc:
    refused = str(exc) == "Unauthorized"
health = api.handler({"resource": "/v1/healthz", "path": "/v1/healthz", "httpMethod": "GET",
    "headers": {}, "multiValueHeaders": {}, "queryStringParameters": None,
    "multiValueQueryStringParameters": None, "pathParameters": None,
    "requestContext": {"stage": "prod", "path": "/v1/healthz", "httpMethod": "GET",
                       "requestId": "probe"}, "body": None, "isBase64Encoded": False}, None)
print(json.dumps({"refused": refused, "health": health["statusCode"],
                  "python": "%d.%d" % sys.version_info[:2],
                  "pydantic_core": __import__("pydantic_core").__file__}))
"""


def test_both_handlers_answer_from_the_unpacked_package_under_python_3_12(
    package: Path, tmp_path: Path
) -> None:
    python = PACKAGE.lambda_python()
    assert python, "no CPython 3.12 on this machine (set LAMBDA_PYTHON): cannot run the package"
    folder = tmp_path / "task"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(folder)
    env = {"PATH": "/usr/bin:/bin", "OBP_ADAPTERS": "fake", "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run(
        [python, "-I", "-S", "-c", PROBE, str(folder)],  # no site-packages, no user paths
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["refused"] is True
    assert answer["health"] == 200
    assert answer["python"] == "3.12"
    assert answer["pydantic_core"].startswith(str(folder))
