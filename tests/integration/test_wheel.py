"""The project as a new user gets it: a wheel built from the repository, installed (not editable)
into a fresh virtual environment, run from outside the repository.

The wheel must hold every file git tracks under the stage folders and the shipped asset folders
(the Grafana dashboard, the Prometheus rules, the runbooks) as ``tfwarden/<path>`` and no other
top-level name. The fresh environment borrows the already-resolved dependencies of the
development virtualenv through a ``.pth`` path line (which does not activate its editable-install
hook), and gets only the project from the wheel. From that copy: ``--version``,
``check-config``, ``tfwarden run`` adopting a model on a devserver (also started from it), one
drift check in the drift worker and one optimizer worker job; the assets read as package
resources."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import REPO, TESTDATA, free_port

pytestmark = pytest.mark.integration
STAGES = ("core", "serving", "probes", "detectors", "policies", "lifecycle", "optimizers", "daemon")
# folders outside the stages whose files ship too, as tfwarden.deploy.grafana and so on
ASSETS = ("deploy/grafana", "deploy/prometheus", "docs/runbooks")
MODEL = TESTDATA / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@dataclass
class Fresh:
    """The fresh virtual environment with the wheel installed, and a work folder outside the
    repository that every command runs in."""

    root: Path
    site_packages: Path
    work: Path
    env: dict[str, str]
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    @property
    def tfwarden(self) -> Path:
        return self.root / "bin" / "tfwarden"

    def run(self, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                              timeout=timeout, cwd=self.work, env=self.env)

    def script(self, name: str, text: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        path = self.work / name
        path.write_text(text)
        return self.run(self.python, path, timeout=timeout)

    def start(self, log: Path, *args: str | Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            proc = subprocess.Popen([str(a) for a in args], stdout=out, stderr=subprocess.STDOUT,
                                    cwd=self.work, env=self.env)
        self.started.append(proc)
        return proc


def clean_env(fresh_bin: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP",
                        "PYTHONNOUSERSITE", "PYTHONSAFEPATH")}
    env["PATH"] = f"{fresh_bin}{os.pathsep}{env.get('PATH', '')}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def check(result: subprocess.CompletedProcess[str], what: str) -> str:
    assert result.returncode == 0, (f"{what}: exit {result.returncode}\n"
                                    f"stdout: {result.stdout[-3000:]}\nstderr: {result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out),
                             str(REPO)], capture_output=True, text=True, timeout=300, cwd=out)
    check(result, "pip wheel")
    (built,) = out.glob("tfwarden-*.whl")
    return built


@pytest.fixture(scope="module")
def fresh(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fresh]:
    base = tmp_path_factory.mktemp("fresh")
    assert REPO not in base.parents
    root, work = base / "venv", base / "work"
    work.mkdir()
    env = clean_env(root / "bin")
    interpreter = getattr(sys, "_base_executable", sys.executable)
    check(subprocess.run([interpreter, "-m", "venv", str(root)], capture_output=True, text=True,
                         timeout=120, cwd=work, env=env), "python -m venv")
    python = root / "bin" / "python"
    # the project only, from the wheel, before the borrowed dependencies are visible to pip
    check(subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                         capture_output=True, text=True, timeout=120, cwd=work, env=env),
          "pip install")
    site_packages = Path(check(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, timeout=30, cwd=work, env=env), "purelib").strip())
    # dependencies already resolved in the development virtualenv: a path line only, so its
    # __editable__ .pth (an import line, honoured only in a site directory) stays inactive
    (site_packages / "zz-tfwarden-dev-dependencies.pth").write_text(
        sysconfig.get_path("purelib") + "\n")
    state = Fresh(root, site_packages, work, env)
    yield state
    for proc in state.started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_wheel_holds_every_tracked_file_and_only_tfwarden(wheel: Path) -> None:
    tracked = subprocess.run(["git", "ls-files", *STAGES, *ASSETS], capture_output=True, text=True,
                             check=True, cwd=REPO, timeout=30).stdout.split()
    tracked = [p for p in tracked if (REPO / p).is_file()]  # not a deletion in progress
    assert len(tracked) > 50
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        metadata = archive.read(f"tfwarden-{VERSION}.dist-info/METADATA").decode()
        entry_points = archive.read(f"tfwarden-{VERSION}.dist-info/entry_points.txt").decode()
    in_wheel = {n.removeprefix("tfwarden/") for n in names if n.startswith("tfwarden/")}
    missing = sorted(p for p in tracked if p not in in_wheel)
    assert not missing, f"tracked files missing from the wheel: {missing}"
    for required in ("policies/rulesets/default.yaml", "lifecycle/routers/nginx.py",
                     "lifecycle/notifiers/dispatch.py", "deploy/grafana/tfwarden.json",
                     "deploy/prometheus/tfwarden-rules.yml"):
        assert required in in_wheel
    # of deploy/ and docs/ only the asset folders (no Kubernetes manifests, no docs/*.md)
    outside = sorted(p for p in in_wheel if p.split("/")[0] not in STAGES
                     and not any(p.startswith(f"{folder}/") for folder in ASSETS))
    assert not outside, f"wheel files outside the stages and assets: {outside}"
    runbooks = {p.name for p in (REPO / "docs" / "runbooks").glob("*.md")}
    assert runbooks == {p.removeprefix("docs/runbooks/") for p in in_wheel
                        if p.startswith("docs/runbooks/")}
    demo = [p for p in tracked if p.startswith("daemon/demo-data/")]
    assert any(p.endswith("saved_model.pb") for p in demo) and set(demo) <= in_wheel
    # nothing stale (an in-tree build keeps build/lib between builds), nothing compiled
    stray = sorted(p for p in in_wheel if not (REPO / p).is_file() or "__pycache__" in p)
    assert not stray, f"wheel files with no source in the tree: {stray}"
    assert {n.split("/")[0] for n in names} == {"tfwarden", f"tfwarden-{VERSION}.dist-info"}
    assert "tfwarden = tfwarden.daemon.cli:main" in entry_points
    assert f"Version: {VERSION}" in metadata and "Requires-Dist: fastapi" in metadata


def test_the_installed_copy_is_the_one_imported(fresh: Fresh) -> None:
    out = check(fresh.script("where.py", """
import json, sys
import tfwarden.daemon, tfwarden.policies, tfwarden.detectors.drift.worker
print(json.dumps({
    "files": [m.__file__ for m in (tfwarden.daemon, tfwarden.policies,
                                   tfwarden.detectors.drift.worker)],
    "path": list(tfwarden.__path__),
    "editable": [m for m in sys.modules if "editable" in m]
              + [repr(f) for f in sys.meta_path if "editable" in repr(f).lower()],
    "sys_path": sys.path}))
"""), "where.py")
    where = json.loads(out)
    for file in where["files"]:
        assert Path(file).is_relative_to(fresh.site_packages), where
    assert where["path"] == [str(fresh.site_packages / "tfwarden")], where
    assert where["editable"] == [], where
    # nothing of the repository on the path but the borrowed dependencies
    inside = [p for p in where["sys_path"] if Path(p or fresh.work).resolve().is_relative_to(REPO)]
    assert inside in ([], [sysconfig.get_path("purelib")]), where["sys_path"]


RESOURCES_SCRIPT = """
import importlib.resources as resources, json
dashboard = resources.files("tfwarden.deploy.grafana").joinpath("tfwarden.json")
rules = resources.files("tfwarden.deploy.prometheus")
try:
    runbooks = sorted(p.name for p in resources.files("tfwarden.docs.runbooks").iterdir()
                      if p.name.endswith(".md"))
except ModuleNotFoundError:  # a tree without docs/runbooks
    runbooks = None
print(json.dumps({
    "dashboard": str(dashboard), "title": json.loads(dashboard.read_text())["title"],
    "rules": sorted(p.name for p in rules.iterdir()),
    "rules_text": rules.joinpath("tfwarden-rules.yml").read_text(),
    "runbooks": runbooks}))
"""


def test_assets_are_package_resources(fresh: Fresh) -> None:
    answer = json.loads(check(fresh.script("resources.py", RESOURCES_SCRIPT), "resources.py"))
    assert Path(answer["dashboard"]).is_relative_to(fresh.site_packages), answer["dashboard"]
    assert answer["title"] == "tfwarden"
    assert answer["rules"] == sorted(p.name for p in (REPO / "deploy" / "prometheus").glob("*.yml"))
    assert answer["rules_text"] == (REPO / "deploy" / "prometheus" / "tfwarden-rules.yml").read_text()
    folder = REPO / "docs" / "runbooks"
    assert answer["runbooks"] == (sorted(p.name for p in folder.glob("*.md"))
                                  if folder.is_dir() else None)


def test_version_and_check_config(fresh: Fresh, tmp_path: Path) -> None:
    assert check(fresh.run(fresh.tfwarden, "--version"), "--version").strip() == f"tfwarden {VERSION}"
    page = check(fresh.run(fresh.tfwarden, "runbook", "TfwardenDown"), "runbook")
    assert page == (REPO / "docs" / "runbooks" / "TfwardenDown.md").read_text()
    example = REPO / "systemd" / "tfwarden.example.yaml"
    out = check(fresh.run(fresh.tfwarden, "check-config", example), "check-config example")
    assert "OK" in out
    schema = json.loads(check(fresh.run(fresh.tfwarden, "config-schema"), "config-schema"))
    assert "properties" in schema


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             log: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout}s\n{log()[-4000:]}")
        time.sleep(0.2)


def test_daemon_adopts_a_model_on_a_devserver(fresh: Fresh) -> None:
    work = fresh.work / "daemon"
    base = work / "models" / "m"
    shutil.copytree(MODEL, base / "1")
    (work / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
    grpc_port, rest_port, port = free_port(), free_port(), free_port()
    dev_log = work / "devserver.log"
    dev = fresh.start(dev_log, fresh.tfwarden, "devserver", f"--port={grpc_port}",
                      f"--rest_api_port={rest_port}", f"--model_config_file={work / 'models.config'}")

    def dev_ready() -> bool:
        assert dev.poll() is None, f"devserver exited {dev.returncode}: {dev_log.read_text()}"
        return "Exporting HTTP/REST API" in dev_log.read_text(errors="replace")
    wait_for(dev_ready, 90, "devserver ready", dev_log.read_text)

    config = work / "tfwarden.yaml"
    config.write_text(f"""
server: {{listen: "127.0.0.1:{port}"}}
state_dir: ./state
serving:
  dev:
    kind: tfserving
    rest_url: "http://127.0.0.1:{rest_port}"
    grpc_address: "127.0.0.1:{grpc_port}"
    model_config_file: ./models.config
    status_interval_seconds: 0.5
models:
  - name: m
    serving: dev
    probe: {{address: labels, labels: [stable], rate_per_second: 5, timeout_seconds: 1}}
    lifecycle: {{version_poll_seconds: 1, router: labels}}
policies: {{ruleset: default}}
""")
    check(fresh.run(fresh.tfwarden, "check-config", config), "check-config")
    log = work / "daemon.log"
    daemon = fresh.start(log, fresh.tfwarden, "run", "--config", config)

    def text() -> str:
        return log.read_text(errors="replace")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        def ready() -> bool:
            assert daemon.poll() is None, f"daemon exited {daemon.returncode}: {text()}"
            try:
                return client.get("/-/ready").status_code == 200
            except httpx.TransportError:
                return False
        wait_for(ready, 30, "daemon ready", text)
        status = client.get("/api/v1/status").json()
        assert status["process"]["heavy_modules_loaded"] == [], status

        def model() -> dict[str, Any]:
            response = client.get("/api/v1/models/m")
            return dict(response.json()) if response.status_code == 200 else {}
        adopted = wait_for(lambda: (m := model()).get("stable_version") == 1 and m, 30,
                           "model adopted", lambda: f"{model()}\n{text()}")
        assert adopted["canary_version"] is None, adopted
        page = client.get("/")  # the status page's templates come from the installed copy
        assert page.status_code == 200 and 'data-model="m" data-phase="stable"' in page.text
        assert client.get("/runbooks/TfwardenDown").status_code == 200
        assert client.get("/api/v1/status").json()["process"]["heavy_modules_loaded"] == []
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0, text()
    assert "Traceback" not in text(), text()
    dev.send_signal(signal.SIGTERM)
    dev.wait(timeout=15)


DRIFT_SCRIPT = """
import asyncio, json, sys
from pathlib import Path
import numpy as np
import tfwarden.detectors.drift.client as client_module
from tfwarden.daemon.recorder import Recorder
from tfwarden.detectors.drift.client import DriftWorkerClient
from tfwarden.detectors.drift.settings import DriftWorkerSettings

async def main() -> None:
    worker = DriftWorkerClient(Path(sys.argv[1]), DriftWorkerSettings(), Recorder())
    worker.process.env["PYTHONVERBOSE"] = "1"  # the worker names every module file it loads
    rng = np.random.default_rng(0)
    try:
        pid = (await worker.process.request("ping"))["pid"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\\0")[:-1]
        configured = await worker.configure({
            "model": "m", "engine": "scipy", "features": ["a", "b"], "kinds": None,
            "reference": {"rows": rng.normal(size=(500, 2)).tolist()}, "online": None,
            "batch": {"p_value": 0.05}})
        shifted = rng.normal(size=(300, 2)) + [0.0, 1.0]
        report = await worker.check("m", "inputs", shifted.tolist())
    finally:
        await worker.stop()
    print(json.dumps({"client": client_module.__file__, "cmdline": cmdline,
                      "configured": configured, "report": report}))

asyncio.run(main())
"""


def test_drift_worker_from_the_installed_copy(fresh: Fresh) -> None:
    state = fresh.work / "drift-state"
    state.mkdir()
    result = fresh.script("drift.py", DRIFT_SCRIPT.replace("sys.argv[1]", repr(str(state))))
    answer = json.loads(check(result, "drift script").strip().splitlines()[-1])
    assert Path(answer["client"]).is_relative_to(fresh.site_packages)
    assert answer["cmdline"][0] == str(fresh.python), answer["cmdline"]
    assert answer["cmdline"][1:3] == ["-m", "tfwarden.detectors.drift.worker"]
    assert answer["configured"]["reference"]["rows"] == 500
    report = answer["report"]
    assert report["engine"] == "scipy" and "b" in report["drifted_features"], report
    assert [f["name"] for f in report["features"]] == ["a", "b"]
    assert report["features"][1]["p_adjusted"] < 1e-6 < report["features"][0]["p_adjusted"]
    # python -v in the worker: "# <file>.pyc matches <file>.py" for each module it imports
    loaded = {Path(line.rsplit(" matches ", 1)[1]) for line in result.stderr.splitlines()
              if line.startswith("# ") and " matches " in line}
    installed = fresh.site_packages / "tfwarden"
    assert installed / "detectors" / "drift" / "worker.py" in loaded, sorted(map(str, loaded))
    assert installed / "core" / "framing.py" in loaded
    borrowed = Path(sysconfig.get_path("purelib"))
    from_repo = [str(f) for f in loaded if f.is_relative_to(REPO) and not f.is_relative_to(borrowed)]
    assert from_repo == [], from_repo


OPTIMIZE_SCRIPT = """
import asyncio, json, sys
import tfwarden.optimizers.pipeline as pipeline

job = json.loads(sys.argv[1])
result = asyncio.run(pipeline.Runner().run(job, 120))
print(json.dumps({"pipeline": pipeline.__file__, "worker": pipeline.WORKER, "result": result}))
"""


def test_optimizer_worker_job_from_the_installed_copy(fresh: Fresh) -> None:
    work = fresh.work / "optimize"
    work.mkdir()
    inputs = np.array([[0.0], [1.0], [2.0], [4.0]], dtype=np.float32)
    np.save(work / "inputs.npy", inputs)
    job = {"kind": "predict_savedmodel", "model": str(MODEL), "inputs": str(work / "inputs.npy"),
           "out": str(work / "out.npy"), "latency_runs": 5, "size_of": None}
    path = work / "optimize.py"
    path.write_text(OPTIMIZE_SCRIPT)
    result = fresh.run(fresh.python, path, json.dumps(job), timeout=180)
    answer = json.loads(check(result, "optimize script").strip().splitlines()[-1])
    assert Path(answer["pipeline"]).is_relative_to(fresh.site_packages)
    assert answer["worker"] == [str(fresh.python), "-m", "tfwarden.optimizers.worker"]
    outcome = answer["result"]
    assert "error" not in outcome, outcome
    assert outcome["peak_rss_bytes"] > 0 and outcome["tensorflow_loaded"] is True, outcome
    assert outcome["rows"] == 4 and outcome["latency"]["p50_ms"] > 0
    np.testing.assert_allclose(np.load(work / "out.npy").reshape(-1), inputs.reshape(-1) / 2 + 2)
