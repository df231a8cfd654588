"""Package discovery for the one ``tfwarden`` distribution (the rest is in pyproject.toml).

The stage folders sit at the top of the repository and install as ``tfwarden.<folder>``. Every
folder below them is found here (a folder of data, such as a rule set or a demo model, is a
namespace package as setuptools wants it), and every file in them that is not Python source is
package data, so neither a subpackage nor a data file can be forgotten;
tests/integration/test_wheel.py checks the wheel against git's file list.

A few folders of deployment assets and documentation ship as data packages too, so that an
installed tfwarden can hand them out (``importlib.resources.files("tfwarden.deploy.grafana")``):
the Grafana dashboard, the Prometheus rules and the alerts' runbook pages. A folder of them that
does not exist (yet) is left out, not an error.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import find_namespace_packages, setup

STAGES = ("core", "serving", "probes", "detectors", "policies", "lifecycle", "optimizers",
          "daemon")
# data-only package -> its folder and the asset folders below it that ship (their files)
ASSETS = {"tfwarden.deploy": (Path("deploy"), ("grafana", "prometheus")),
          "tfwarden.docs": (Path("docs"), ("runbooks",))}
ROOT = Path(__file__).resolve().parent


def _packages() -> dict[str, Path]:
    """Import name -> folder, for every folder below the stage folders."""
    found = {}
    for stage in STAGES:
        found[f"tfwarden.{stage}"] = Path(stage)
        for sub in find_namespace_packages(where=str(ROOT / stage), exclude=["*__pycache__*"]):
            found[f"tfwarden.{stage}.{sub}"] = Path(stage, *sub.split("."))
    return found


def _assets() -> dict[str, list[str]]:
    """Package data of the asset packages, as paths below their folders.

    Only ``tfwarden.deploy`` and ``tfwarden.docs`` are packages: the folders below them are
    found by the import system as namespace portions. Declared as packages of their own, an
    editable install would give them a ``__path__`` with setuptools' path-hook placeholder,
    which Python 3.11's ``importlib.resources.files`` refuses (NotADirectoryError)."""
    return {name: [str(Path(sub) / f) for sub in subs if (ROOT / folder / sub).is_dir()
                   for f in _data(folder / sub)]
            for name, (folder, subs) in ASSETS.items()}


def _data(folder: Path) -> list[str]:
    """The files of ``folder`` itself that are not Python sources."""
    return sorted(p.name for p in (ROOT / folder).iterdir()
                  if p.is_file() and p.suffix not in (".py", ".pyc"))


PACKAGES = _packages()
ASSET_DATA = _assets()
setup(
    packages=[*PACKAGES, *ASSETS],
    package_dir={**{name: str(folder) for name, folder in PACKAGES.items()},
                 **{name: str(folder) for name, (folder, _) in ASSETS.items()}},
    package_data={**{name: _data(folder) for name, folder in PACKAGES.items() if _data(folder)},
                  **{name: files for name, files in ASSET_DATA.items() if files}},
)
