"""The wheel ships every package under src/: pyproject.toml lists them one by one."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


def listed_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = config["tool"]["setuptools"]
    assert setuptools["package-dir"] == {"obp_workflow": "src"}
    packages: list[str] = setuptools["packages"]
    return packages


def packages_on_disk() -> set[str]:
    found = set()
    for init in SRC.rglob("__init__.py"):
        relative = init.parent.relative_to(SRC)
        if "__pycache__" in relative.parts:
            continue
        found.add(".".join(("obp_workflow", *relative.parts)))
    return found


def test_the_source_tree_has_packages() -> None:
    """Guards the next two tests against an empty glob (e.g. a moved src folder)."""
    assert {"obp_workflow", "obp_workflow.core", "obp_workflow.ports"} <= packages_on_disk()


def test_every_package_under_src_is_listed() -> None:
    missing = packages_on_disk() - set(listed_packages())

    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"


def test_every_listed_package_exists_under_src() -> None:
    absent = set(listed_packages()) - packages_on_disk()

    assert not absent, f"listed in pyproject.toml but no __init__.py under src/: {sorted(absent)}"


def test_no_package_is_listed_twice() -> None:
    packages = listed_packages()

    assert len(packages) == len(set(packages))


def test_every_folder_with_python_code_is_a_package() -> None:
    """A folder of modules without __init__.py would silently be left out of the wheel."""
    loose = sorted(
        str(folder.relative_to(SRC))
        for folder in {p.parent for p in SRC.rglob("*.py")}
        if "__pycache__" not in folder.parts and not (folder / "__init__.py").exists()
    )

    assert not loose, f"folders with modules but no __init__.py: {loose}"
