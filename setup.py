"""Package discovery for the one ``tfwarden`` distribution (the rest is in pyproject.toml).

The stage folders sit at the top of the repository and install as ``tfwarden.<folder>``. Every
folder below them is found here (a folder of data, such as a rule set or a demo model, is a
namespace package as setuptools wants it), and every file in them that is not Python source is
package data, so neither a subpackage nor a data file can be forgotten;
tests/integration/test_wheel.py checks the wheel against git's file list.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_namespace_packages, setup

STAGES = ("core", "serving", "probes", "detectors", "policies", "lifecycle", "optimizers",
          "daemon")
ROOT = Path(__file__).resolve().parent


def _packages() -> dict[str, Path]:
    """Import name -> folder, for every folder below the stage folders."""
    found = {}
    for stage in STAGES:
        found[f"tfwarden.{stage}"] = Path(stage)
        for sub in find_namespace_packages(where=str(ROOT / stage), exclude=["*__pycache__*"]):
            found[f"tfwarden.{stage}.{sub}"] = Path(stage, *sub.split("."))
    return found


def _data(folder: Path) -> list[str]:
    """The files of ``folder`` itself that are not Python sources."""
    return sorted(p.name for p in (ROOT / folder).iterdir()
                  if p.is_file() and p.suffix not in (".py", ".pyc"))


PACKAGES = _packages()
setup(
    packages=list(PACKAGES),
    package_dir={name: str(folder) for name, folder in PACKAGES.items()},
    package_data={name: _data(folder) for name, folder in PACKAGES.items() if _data(folder)},
)
