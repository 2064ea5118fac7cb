"""Build the Lambda package, ``build/lambda.zip``: the service and its runtime dependencies only,
installed for the Lambda runtime (python3.12, x86_64), with bytecode compiled.

    .venv/bin/python deploy/package.py [--force]        (make package)

1. The service is built as a wheel (``build/wheel/``), then installed with its runtime
   dependencies, and no extra, by ``pip install --target build/lambda`` for the Lambda platform
   (manylinux wheels for CPython 3.12 on x86_64, binary wheels only: no compiler of this machine
   decides what runs in Lambda).
2. Its modules are compiled to bytecode by a CPython 3.12 (``LAMBDA_PYTHON``, else the first
   ``python3.12`` that runs), as unchecked-hash .pyc files: Lambda cannot write bytecode into
   its read-only code folder, and an unchecked .pyc does not depend on the files' times after
   unzipping. Without a 3.12 interpreter the package is built without bytecode, and says so.
3. ``build/lambda.zip`` is written with sorted entries and fixed times, from a wheel with fixed
   times (``SOURCE_DATE_EPOCH``) and bytecode compiled with a fixed hash seed, so that a rebuild
   differs at most in a few .pyc files (marshal's output can depend on reference counts);
   scripts (``bin/``) and C sources are left out.

The build is skipped when ``build/lambda.zip.key`` matches the hash of pyproject.toml, every
file under src/ and this script. Prints the package's size, and the image's build command (run
when a container engine answers here).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build"
TARGET = BUILD / "lambda"
WHEELS = BUILD / "wheel"
ZIP = BUILD / "lambda.zip"
KEY = BUILD / "lambda.zip.key"

PYTHON_VERSION = "3.12"
#: The Lambda runtime python3.12 runs on Amazon Linux 2023 (glibc 2.34).
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")
LEFT_OUT_SUFFIXES = (".c", ".h", ".pyx", ".pxd")
ZIP_LIMIT_BYTES = 50 * 1024 * 1024
UNZIPPED_LIMIT_BYTES = 250 * 1024 * 1024
IMAGE = "obp-workflow"


def source_key() -> str:
    digest = hashlib.sha256()
    files = [REPO / "pyproject.toml", Path(__file__).resolve()]
    files += sorted(
        p for p in (REPO / "src").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    digest.update(" ".join((PYTHON_VERSION, *PLATFORMS)).encode())
    return digest.hexdigest()


def lambda_python() -> str | None:
    """A CPython 3.12 that runs: ``LAMBDA_PYTHON``, ``python3.12`` on PATH, or pyenv's."""
    candidates = [os.environ.get("LAMBDA_PYTHON", ""), shutil.which("python3.12") or ""]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted(glob.glob(str(pyenv_root / "versions" / "3.12*" / "bin" / "python3.12")))
    candidates += ["/usr/bin/python3.12", "/usr/local/bin/python3.12"]
    for candidate in filter(None, candidates):
        try:
            out = subprocess.run(  # noqa: S603  (an interpreter this script looked up)
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.strip() == PYTHON_VERSION:
            return candidate
    return None


#: Reproducible builds: the wheel's file times, and the order of sets compiled into bytecode.
STABLE = {"SOURCE_DATE_EPOCH": "315532800", "PYTHONHASHSEED": "0"}


def run(*argv: str) -> None:
    print("+", " ".join(argv), flush=True)
    env = {**os.environ, **STABLE}
    subprocess.run(argv, check=True, cwd=REPO, env=env)  # noqa: S603  (argv built here, no shell)


def build() -> bool:
    """Build the package; True when its bytecode was compiled."""
    for folder in (TARGET, WHEELS):
        shutil.rmtree(folder, ignore_errors=True)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet")
    run(*pip, "wheel", "--no-deps", "--wheel-dir", str(WHEELS), str(REPO))
    (wheel,) = WHEELS.glob("obp_workflow-*.whl")
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    run(
        *pip,
        "install",
        "--target",
        str(TARGET),
        *platforms,
        "--implementation",
        "cp",
        "--python-version",
        PYTHON_VERSION,
        "--only-binary=:all:",
        "--no-compile",
        str(wheel),
    )
    python = lambda_python()
    if python is not None:
        run(
            python,
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "--invalidation-mode",
            "unchecked-hash",
            str(TARGET),
        )
    else:
        print(f"no CPython {PYTHON_VERSION} found (set LAMBDA_PYTHON): the package has no bytecode")
    write_zip()
    return python is not None


def write_zip() -> None:
    ZIP.unlink(missing_ok=True)
    files = sorted(
        p
        for p in TARGET.rglob("*")
        if p.is_file()
        and p.relative_to(TARGET).parts[0] != "bin"
        and not p.name.endswith(LEFT_OUT_SUFFIXES)
    )
    with zipfile.ZipFile(ZIP, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in files:
            info = zipfile.ZipInfo(str(path.relative_to(TARGET)), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=9)


def sizes() -> tuple[int, int, int]:
    """(zipped bytes, unzipped bytes, entries) of the package."""
    with zipfile.ZipFile(ZIP) as archive:
        infos = archive.infolist()
        return ZIP.stat().st_size, sum(i.file_size for i in infos), len(infos)


def ensure(force: bool = False) -> Path:
    """``build/lambda.zip``, built unless it is current."""
    key = source_key()
    if not force and ZIP.exists() and KEY.exists() and KEY.read_text().strip() == key:
        print(f"{ZIP.relative_to(REPO)} is up to date")
    else:
        BUILD.mkdir(exist_ok=True)
        KEY.unlink(missing_ok=True)
        build()
        KEY.write_text(key + "\n")
    return ZIP


def image_command() -> list[str]:
    version = next(
        line.split("=", 1)[1].strip().strip('"')
        for line in (REPO / "pyproject.toml").read_text().splitlines()
        if line.startswith("version")
    )
    return ["docker", "build", "-f", "deploy/Dockerfile", "-t", f"{IMAGE}:{version}", "."]


def engine_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(
                ["docker", "info"],  # noqa: S607  (whichever docker is on PATH)
                capture_output=True,
                timeout=20,
                check=False,
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    parser.add_argument("--no-image", action="store_true", help="do not build the image")
    args = parser.parse_args(argv)
    ensure(args.force)
    zipped, unzipped, entries = sizes()
    print(
        f"{ZIP.relative_to(REPO)}: {zipped / 1024**2:.1f} MB zipped (limit 50 MB), "
        f"{unzipped / 1024**2:.1f} MB unzipped (limit 250 MB), {entries} files"
    )
    if zipped > ZIP_LIMIT_BYTES or unzipped > UNZIPPED_LIMIT_BYTES:
        print("the package is above Lambda's limits", file=sys.stderr)
        return 1
    command = image_command()
    if args.no_image or not engine_answers():
        print("the workflow container image (no container engine answers here):")
        print("  " + " ".join(command))
        return 0
    run(*command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
