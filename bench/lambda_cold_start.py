"""Cold start and warm latency of the two Lambda handlers, on the in-memory adapters.

    .venv/bin/python bench/lambda_cold_start.py [--runs 7] [--requests 2000] [--write]

``--write`` also puts the tables into docs/benchmarks.md (its section "The Lambda handlers", as
``make bench`` writes it), leaving the rest of that file as it is.

1. Cold start: a fresh interpreter per run imports the handler module and invokes it once
   (median of ``--runs``), with the bytecode compiled (.pyc, as a Lambda package should ship it)
   and without (every module compiled from source, nothing written); with every package of the
   venv, and with the runtime dependencies only (``deps: runtime``: the packages that only the
   dev extra brings, e.g. werkzeug, yaml, click, rich, are made unimportable, as they are absent
   from a Lambda package built from the service's requirements; optional imports of them fail
   at once); and in the Lambda package itself (``deps: lambda.zip``: ``build/lambda.zip`` as
   ``make package`` builds it for the python3.12 runtime, unpacked into one folder and run by a
   clean virtual environment of a CPython 3.12, so that nothing but the standard library and
   that folder is importable).
   Reported: the time to the first answer (from starting the interpreter to the end of the
   first invocation: what a Lambda cold start costs, as the runtime never tears the interpreter
   down after it), the whole process (the same, plus the interpreter's exit), the import, the
   first invocation (which builds what the handler needs), and the largest imports
   (``-X importtime``).
   - authorizer: a REQUEST event whose token the default fake verifier does not know: the first
     call builds the token verifier alone and verifies, then raises ``Unauthorized`` (the same
     path as a valid token, up to the verifier's lookup);
   - authorizer (aws): ``OBP_ADAPTERS=aws`` with a valid token minted by the Keycloak-shaped test
     issuer (``tests/keycloak_issuer.py``, served by this script on loopback over plain HTTP):
     the first call builds the Keycloak verifier, reads the realm's discovery document and its
     JWKS, checks the signature and the claims, and returns the policy. Not measured: a TLS
     handshake and the network's round trips to a real Keycloak;
   - API: ``POST .../runs`` with an authorizer context: validation, the application, the
     in-memory repository, the run view and its response validation.
2. Warm latency in one process: p50/p99 of ``--requests`` calls of each handler, container
   built, bytecode compiled.

Prints Markdown tables for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.keycloak_issuer import KeycloakIssuer  # noqa: E402

from obp_workflow.adapters.fake.token_verifier import FakeTokenVerifier  # noqa: E402
from obp_workflow.core.identity import Principal, parse_groups  # noqa: E402
from obp_workflow.entrypoints.aws_lambda import api as lambda_api  # noqa: E402
from obp_workflow.entrypoints.aws_lambda import authorizer as lambda_authorizer  # noqa: E402
from obp_workflow.entrypoints.composition.root import build  # noqa: E402
from obp_workflow.entrypoints.composition.settings import load_settings  # noqa: E402

BASE_PYTHON = os.path.join(sys.base_prefix, "bin", "python3")
PYTHON = sys.executable

VLAB = "6f1c3a52-9d4e-4b8a-a1f0-3c2d5e7f9a10"
PROJECT = "0b7e2d41-5c3f-4e6a-9b8d-2a1c4f6e8d20"
RUNS = f"/v1/virtual-labs/{VLAB}/projects/{PROJECT}/runs"
REQUEST = {"name": "bench", "command": ["neurodamus", "--tstop", "10"], "outputs": ["out.h5"]}
METHOD_ARN = "arn:aws:execute-api:eu-north-1:123456789012:abc123/prod/GET/v1/x"

#: Runs first in every child: makes the modules of ``hidden`` unimportable (``deps: runtime``).
HIDE = """
import sys
for name in %(hidden)r:
    sys.modules.setdefault(name, None)
"""

CHILD = {
    "authorizer": """
import time
t0 = time.perf_counter()
from obp_workflow.entrypoints.aws_lambda import authorizer as module
t1 = time.perf_counter()
event = {"type": "REQUEST", "methodArn": %(arn)r, "headers": {"Authorization": "Bearer cold"}}
try:
    module.handler(event, None)
except Exception as exc:
    assert str(exc) == "Unauthorized", exc
t2 = time.perf_counter()
print({"import_ms": (t1 - t0) * 1000, "first_call_ms": (t2 - t1) * 1000, "at": time.monotonic()})
""",
    "authorizer (valid token)": """
import time
t0 = time.perf_counter()
from obp_workflow.entrypoints.aws_lambda import authorizer as module
t1 = time.perf_counter()
event = {"type": "REQUEST", "methodArn": %(arn)r, "headers": {"Authorization": %(bearer)r}}
answer = module.handler(event, None)
assert answer["principalId"] == %(subject)r, answer
assert answer["context"]["memberships"] == %(groups)r, answer
t2 = time.perf_counter()
print({"import_ms": (t1 - t0) * 1000, "first_call_ms": (t2 - t1) * 1000, "at": time.monotonic()})
""",
    "api": """
import time
t0 = time.perf_counter()
from obp_workflow.entrypoints.aws_lambda import api as module
t1 = time.perf_counter()
event = %(event)r
response = module.handler(event, None)
assert response["statusCode"] == 202, response
t2 = time.perf_counter()
print({"import_ms": (t1 - t0) * 1000, "first_call_ms": (t2 - t1) * 1000, "at": time.monotonic()})
""",
}


def api_event(method: str, path: str, body: object = None, *, principal_groups: str = "") -> dict:
    headers = {"Content-Type": "application/json"}
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "requestContext": {
            "stage": "prod",
            "path": path,
            "httpMethod": method,
            "requestId": "bench",
            "authorizer": {
                "principalId": "bench-user",
                "subject": "bench-user",
                "username": "bench",
                "memberships": principal_groups or f"/proj/{VLAB}/{PROJECT}/member",
            },
        },
        "body": None if body is None else json.dumps(body),
        "isBase64Encoded": False,
    }


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# ================================================================ cold start


SUBJECT = "3f1c2a9e-0000-4000-8000-0000000000b0"
GROUPS = f"/proj/{VLAB}/{PROJECT}/member"
AUDIENCE = "workflow"


@dataclass(frozen=True)
class Handler:
    child: str  # the key of CHILD
    settings: dict[str, str]
    token: str = ""


def handlers(issuer: KeycloakIssuer) -> dict[str, Handler]:
    """The measured handlers; ``authorizer (aws)`` trusts ``issuer`` and gets one of its tokens
    (valid for an hour: longer than the script runs)."""
    keycloak = {
        "OBP_ADAPTERS": "aws",
        "OBP_KEYCLOAK_ISSUER": issuer.issuer,
        "OBP_KEYCLOAK_AUDIENCES": AUDIENCE,
    }
    token = issuer.mint(SUBJECT, groups=[GROUPS], audience=AUDIENCE, lifetime=3600)
    return {
        "authorizer": Handler("authorizer", {}),
        "authorizer (aws)": Handler("authorizer (valid token)", keycloak, token),
        "api": Handler("api", {}),
    }


def dev_only_modules() -> list[str]:
    """Top-level modules of the installed distributions outside the service's runtime
    dependency closure (``obp-workflow`` without extras, following requested extras)."""
    kept: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo: list[tuple[str, frozenset[str]]] = [("obp-workflow", frozenset())]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if (key, extras) in seen:
            continue
        seen.add((key, extras))
        kept.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        environments = [{"extra": extra} for extra in sorted(extras)] or [{"extra": ""}]
        for text in requires:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate(env) for env in environments):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return sorted(
        module
        for module, dists in metadata.packages_distributions().items()
        if module.isidentifier() and not any(canonicalize_name(d) in kept for d in dists)
    )


def child_env(
    *, bytecode: bool, cache_dir: str, settings: dict[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "OBP_"))}
    env.update(settings or {})
    if not bytecode:
        # An empty cache prefix: every module is compiled from source, and nothing is written.
        env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=cache_dir)
    return env


def _deploy_package() -> ModuleType:
    """deploy/package.py (what ``make package`` runs)."""
    spec = importlib.util.spec_from_file_location("deploy_package", REPO / "deploy" / "package.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lambda_package(dest: str) -> tuple[str, str]:
    """``build/lambda.zip`` (built by ``make package`` unless current) unpacked into ``dest``;
    (the CPython of the Lambda runtime's version, the folder)."""
    package = _deploy_package()
    python = package.lambda_python()
    if python is None:
        raise SystemExit("no CPython 3.12 to run build/lambda.zip with (set LAMBDA_PYTHON)")
    with contextlib.redirect_stdout(sys.stderr):  # its progress is not part of the tables
        archive = package.ensure()
    with zipfile.ZipFile(archive) as unpacked:
        unpacked.extractall(dest)
    return python, dest


def clean_interpreter(dest: str, base: str = BASE_PYTHON) -> str:
    """A virtual environment of ``base`` with nothing installed: the standard library only, and
    no ``.pth`` file of any installation run at start-up (as in Lambda's runtime, which adds the
    package folder to the path)."""
    subprocess.run([base, "-m", "venv", "--without-pip", dest], check=True, capture_output=True)
    return os.path.join(dest, "bin", "python")


def cold_once(
    handler: Handler,
    *,
    bytecode: bool,
    cache_dir: str,
    hidden: Sequence[str] = (),
    package: tuple[str, str] | None = None,
) -> dict[str, float]:
    """One fresh interpreter; ``package``: (the clean interpreter, the package folder)."""
    code = HIDE % {"hidden": list(hidden)} + CHILD[handler.child] % {
        "arn": METHOD_ARN,
        "event": api_event("POST", RUNS, REQUEST),
        "bearer": f"Bearer {handler.token}",
        "subject": SUBJECT,
        "groups": GROUPS,
    }
    env = child_env(bytecode=bytecode, cache_dir=cache_dir, settings=handler.settings)
    python = PYTHON
    if package is not None:
        python, env["PYTHONPATH"] = package  # the standard library and the package, nothing else
    start, started_at = time.perf_counter(), time.monotonic()
    out = subprocess.run(
        [python, "-c", code],
        env=env,
        cwd=package[1] if package else REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    total = (time.perf_counter() - start) * 1000
    result: dict[str, float] = eval(out.stdout.strip().splitlines()[-1])  # our own child's dict
    result["process_ms"] = total
    # CLOCK_MONOTONIC is one clock for every process of the machine.
    result["answer_ms"] = (result.pop("at") - started_at) * 1000
    return result


def interpreter_alone(runs: int, python: str = PYTHON) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            [python, "-c", "pass"], check=True, env=child_env(bytecode=True, cache_dir="")
        )
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _importtime(code: str) -> list[tuple[str, float]]:
    """(module, self ms) of every import ``code`` makes."""
    out = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", code],
        env=child_env(bytecode=True, cache_dir=""),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = []
    for line in out.stderr.splitlines():
        fields = line.split("|")
        own = fields[0].removeprefix("import time:").strip()
        if not line.startswith("import time:") or len(fields) != 3 or not own.isdigit():
            continue
        lines.append((fields[2].strip(), int(own) / 1000))
    return lines


def largest_imports(code: str, top: int = 6, after: str = "pass") -> list[tuple[str, float]]:
    """Where the import time of ``code`` goes: the modules' own time summed by top-level package
    (``obp_workflow`` by layer), beyond what the interpreter and ``after`` import."""
    startup = {name for name, _ in _importtime(after)}
    costs: dict[str, float] = {}
    for name, ms in _importtime(code):
        if name in startup:
            continue
        parts = name.split(".")
        root = ".".join(parts[:2]) if parts[0] == "obp_workflow" else parts[0]
        costs[root] = costs.get(root, 0.0) + ms
    return sorted(costs.items(), key=lambda kv: -kv[1])[:top]


def cold(runs: int) -> None:
    print(f"### Cold start (fresh interpreter; median of {runs} runs)\n")
    hidden = dev_only_modules()
    with (
        tempfile.TemporaryDirectory() as empty,
        tempfile.TemporaryDirectory() as folder,
        KeycloakIssuer() as issuer,
    ):
        runtime_python, unpacked = lambda_package(os.path.join(folder, "package"))
        package = (clean_interpreter(os.path.join(folder, "python"), runtime_python), unpacked)
        runtime_version = subprocess.run(
            [package[0], "-c", "import platform; print(platform.python_version())"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        venv, clean = interpreter_alone(runs), interpreter_alone(runs, package[0])
        print(
            f"Interpreter alone (`python -c pass`): {venv:.1f} ms in the venv, {clean:.1f} ms "
            f"in the clean environment of the lambda.zip rows (Python {runtime_version}).\n"
        )
        print(
            "deps: `venv` the development venv; `runtime` the same with development-only "
            "packages made unimportable; `lambda.zip` the Lambda package itself "
            "(`build/lambda.zip` as `make package` builds it for the python3.12 runtime, "
            f"unpacked, run by a clean virtual environment of Python {runtime_version}: the "
            "standard library and the package, nothing else).\n"
        )
        print(
            "to first answer: from starting the interpreter to the end of the first invocation "
            "(a Lambda cold start: the runtime never tears the interpreter down afterwards); "
            "process: the same plus the interpreter's exit. authorizer (aws): a valid token "
            "minted by the Keycloak-shaped test issuer, served on loopback over plain HTTP: the "
            "first call reads its discovery document and JWKS (no TLS handshake, no network "
            "round trip).\n"
        )
        print(
            "| handler | bytecode | deps | to first answer (ms) | process (ms) | import (ms) "
            "| first call (ms) |"
        )
        print("|---|---|---|---:|---:|---:|---:|")
        variants = [(True, "venv"), (False, "venv"), (True, "runtime"), (True, "lambda.zip")]
        for name, handler in handlers(issuer).items():
            cold_once(handler, bytecode=True, cache_dir=empty)  # writes any missing .pyc
            for bytecode, deps in variants:
                hide = hidden if deps == "runtime" else ()
                results = [
                    cold_once(
                        handler,
                        bytecode=bytecode,
                        cache_dir=empty,
                        hidden=hide,
                        package=package if deps == "lambda.zip" else None,
                    )
                    for _ in range(runs)
                ]
                med = {k: statistics.median(r[k] for r in results) for k in results[0]}
                print(
                    f"| {name} | {'.pyc' if bytecode else 'none'} | {deps} "
                    f"| {med['answer_ms']:.0f} | {med['process_ms']:.0f} | {med['import_ms']:.0f} "
                    f"| {med['first_call_ms']:.1f} |"
                )
    print()
    imports = {
        "the authorizer module": "import obp_workflow.entrypoints.aws_lambda.authorizer",
        "the authorizer's first call (the fake token verifier)": (
            "import obp_workflow.entrypoints.aws_lambda.authorizer, "
            "obp_workflow.entrypoints.composition.token_verifier, "
            "obp_workflow.adapters.fake.token_verifier"
        ),
        "the authorizer's first call (the Keycloak verifier)": (
            "import obp_workflow.entrypoints.aws_lambda.authorizer, "
            "obp_workflow.entrypoints.composition.token_verifier, "
            "obp_workflow.adapters.keycloak.verifier"
        ),
        "the API module": "import obp_workflow.entrypoints.aws_lambda.api",
        "the composition root (the API's first call, beyond the API module)": (
            "import obp_workflow.entrypoints.aws_lambda.api, "
            "obp_workflow.entrypoints.composition.root"
        ),
    }
    api_module = imports["the API module"]
    for what, code in imports.items():
        after = api_module if "beyond the API module" in what else "pass"
        shown = ", ".join(f"{name} {ms:.0f}" for name, ms in largest_imports(code, after=after))
        print(f"Import time by package (ms, own time, .pyc, one run), {what}: {shown}.\n")


# ================================================================ warm


def warm(requests: int) -> None:
    principal = Principal("bench-user", "bench", parse_groups([f"/proj/{VLAB}/{PROJECT}/member"]))
    container = build(load_settings(), token_verifier=FakeTokenVerifier({"warm": principal}))
    lambda_api.use_container(container)
    lambda_authorizer.use_container(container)

    def in_project(project: str, method: str, path: str = "", body: object = None) -> dict:
        runs = f"/v1/virtual-labs/{VLAB}/projects/{project}/runs"
        return api_event(
            method, runs + path, body, principal_groups=f"/proj/{VLAB}/{project}/member"
        )

    def submitted(project: str) -> str:
        response = lambda_api.handler(in_project(project, "POST", "", REQUEST), None)
        return str(json.loads(response["body"])["run_id"])

    listed, cancelled, submits = (str(uuid.uuid4()) for _ in range(3))
    run_id = [submitted(listed) for _ in range(20)][-1]  # one page of 20 runs
    to_cancel = [submitted(cancelled) for _ in range(requests + 50)]
    listing = in_project(listed, "GET") | {
        "queryStringParameters": {"limit": "20"},
        "multiValueQueryStringParameters": {"limit": ["20"]},
    }
    auth_event = {
        "type": "REQUEST",
        "methodArn": METHOD_ARN,
        "headers": {"Authorization": "Bearer warm"},
    }
    stranger = api_event("GET", RUNS, principal_groups=f"/proj/{VLAB}/{uuid.uuid4()}/member")

    cases: list[tuple[str, Callable[[], object]]] = [
        ("authorizer: valid token", lambda: lambda_authorizer.handler(auth_event, None)),
        ("API: GET /v1/healthz", lambda: lambda_api.handler(api_event("GET", "/v1/healthz"), None)),
        (
            "API: POST .../runs (submit)",
            lambda: lambda_api.handler(in_project(submits, "POST", "", REQUEST), None),
        ),
        (
            "API: GET .../runs/{run}",
            lambda: lambda_api.handler(in_project(listed, "GET", f"/{run_id}"), None),
        ),
        ("API: GET .../runs?limit=20 (of 20)", lambda: lambda_api.handler(listing, None)),
        (
            "API: POST .../runs/{run}/cancel",
            lambda: lambda_api.handler(
                in_project(cancelled, "POST", f"/{to_cancel.pop()}/cancel"), None
            ),
        ),
        (
            "API: 422 (unknown field)",
            lambda: lambda_api.handler(in_project(submits, "POST", "", {**REQUEST, "x": 1}), None),
        ),
        ("API: 404 (not a member)", lambda: lambda_api.handler(stranger, None)),
    ]
    print(f"### Warm latency per request (in process, fake adapters; {requests} requests each)\n")
    print("| request | p50 (ms) | p99 (ms) |")
    print("|---|---:|---:|")
    for name, call in cases:
        for _ in range(50):
            call()
        times = []
        for _ in range(requests):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1000)
        print(f"| {name} | {percentile(times, 0.5):.3f} | {percentile(times, 0.99):.3f} |")
    print()
    lambda_api.use_container(None)
    lambda_authorizer.use_container(None)


SECTION = "## The Lambda handlers"


def section(tables: str) -> list[str]:
    """The section of docs/benchmarks.md that holds this script's output (``make bench`` and
    ``--write`` both write it)."""
    return [
        SECTION,
        "",
        f"With `{Path(sys.executable).name} bench/lambda_cold_start.py` (fresh interpreters; "
        "'runtime' deps: the venv's development-only packages made unimportable, as in the "
        "Lambda package; 'lambda.zip': the package `make package` builds, on the runtime's "
        "Python). Targets: authorizer under 150 ms, API handler under 300 ms (with bytecode), "
        "warm p99 under 5 ms.",
        "",
        tables.strip(),
        "",
    ]


def write_section(tables: str, path: Path = REPO / "docs" / "benchmarks.md") -> None:
    """Replace the Lambda section of ``path`` (up to the next section), keeping the rest."""
    text = path.read_text()
    start = text.find(SECTION)
    if start < 0:
        start = len(text)
    end = text.find("\n## ", start + len(SECTION))
    rest = "" if end < 0 else text[end + 1 :]
    head = text[:start].rstrip("\n") + "\n\n"
    path.write_text(head + "\n".join(section(tables)) + ("\n" + rest if rest else ""))
    print(f"written {path}", file=sys.stderr)


class _Tee(io.StringIO):
    """What is printed, kept as well."""

    def write(self, text: str) -> int:
        sys.__stdout__.write(text)
        return super().write(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=7, help="fresh interpreters per cold-start figure"
    )
    parser.add_argument("--requests", type=int, default=2000, help="calls per warm figure")
    parser.add_argument(
        "--write", action="store_true", help="also write the tables into docs/benchmarks.md"
    )
    args = parser.parse_args(argv)
    out = _Tee()
    with contextlib.redirect_stdout(out):
        cpu = platform.processor() or platform.machine()
        python = platform.python_version()
        print(f"Machine: {os.cpu_count()} cores ({cpu}), Python {python}, {platform.platform()}.\n")
        command = f"bench/lambda_cold_start.py --runs {args.runs} --requests {args.requests}"
        print(f"Command: `.venv/bin/python {command}`\n")
        started = os.getloadavg()[0]
        with contextlib.redirect_stdout(io.StringIO()) as tables:
            cold(args.runs)
            warm(args.requests)
        print(
            f"Load average (1 min): {started:.2f} when the run started, "
            f"{os.getloadavg()[0]:.2f} when it ended (the benchmark keeps one of the two cores "
            "busy).\n"
        )
        print(tables.getvalue(), end="")
    if args.write:
        write_section(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
