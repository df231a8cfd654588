"""Package discovery for the one ``tfwarden`` distribution (the rest is in pyproject.toml).

The stage folders sit at the top of the repository and install as ``tfwarden.<folder>``. Every
subpackage (a folder with ``__init__.py``) is found here, and every other file inside a package
folder (rule sets, demo models, dashboards) is package data, so neither can be forgotten;
tests/unit/test_packaging.py checks the wheel against git's file list.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

STAGES = ("core", "serving", "probes", "detectors", "policies", "lifecycle", "optimizers",
          "daemon")
ROOT = Path(__file__).resolve().parent


def _packages() -> dict[str, Path]:
    """Import name -> folder, for every package below the stage folders."""
    found = {}
    for stage in STAGES:
        found[f"tfwarden.{stage}"] = Path(stage)
        for sub in find_packages(where=str(ROOT / stage)):
            found[f"tfwarden.{stage}.{sub}"] = Path(stage, *sub.split("."))
    return found


def _data(folder: Path, packages: set[Path]) -> list[str]:
    """Files of ``folder`` (and its non-package subfolders) that are not Python sources."""
    files = []
    for path in sorted((ROOT / folder).rglob("*")):
        relative = path.relative_to(ROOT)
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        owner = next(p for p in sorted(packages, key=lambda p: -len(p.parts))
                     if relative.parts[:len(p.parts)] == p.parts)
        if owner == folder:
            files.append(str(relative.relative_to(folder)))
    return files


PACKAGES = _packages()
setup(
    packages=list(PACKAGES),
    package_dir={name: str(folder) for name, folder in PACKAGES.items()},
    package_data={name: _data(folder, set(PACKAGES.values()))
                  for name, folder in PACKAGES.items() if _data(folder, set(PACKAGES.values()))},
)
