"""Every optimization method on a digits MLP trained here: the artifact passes the gate, is
published atomically with provenance, and the devserver serves it (TFLite with
--prefer_tflite_model); a destroyed candidate is rejected; tfmot's environment stays in its
worker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import DevServer
from tfwarden.core.errors import OptimizeError
from tfwarden.optimizers.pipeline import Report, Request, Runner, optimize
from tfwarden.optimizers.publish import MANIFEST, PROVENANCE, sha256_files, versions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("optimize")
    subprocess.run([sys.executable, "-m", "tfwarden.optimizers.models", str(out), "--epochs", "15"],
                   check=True, timeout=300, capture_output=True)
    yield out


def run(models: Path, method: str, **params: Any) -> Report:
    request = Request(source=models / "m" / "1", method=method, base=models / "m",
                      golden=models / "golden.npz", representative=models / "representative.npy",
                      train=models / "train.npz", params=params, latency_runs=30,
                      timeout_seconds=300)
    return asyncio.run(optimize(request))


@pytest.mark.parametrize("method,params", [
    ("int8", {}), ("dynamic", {}), ("float16", {}), ("int8", {"io": "int8"}),
    ("keras_int8", {}), ("keras_float16", {}),
    ("prune", {"sparsity": 0.5}), ("cluster", {"clusters": 16}),
])
def test_each_method_passes_the_gate_and_is_published(models: Path, method: str,
                                                      params: dict[str, Any]) -> None:
    report = run(models, method, **params)
    assert report.accepted, report.reasons
    version_dir = models / "m" / str(report.version)
    provenance = json.loads((version_dir / PROVENANCE).read_text())
    assert provenance["source_version"] == 1 and provenance["method"] == method
    files = sha256_files(version_dir)
    files.pop(PROVENANCE)
    files.pop(MANIFEST, None)
    assert provenance["sha256"] == files  # every file as published
    metrics = report.metrics
    assert metrics["top1_agreement"] >= 0.97
    assert metrics["source_accuracy"] - metrics["candidate_accuracy"] <= 0.01
    if method in ("int8", "dynamic", "float16"):
        assert (version_dir / "model.tflite").is_file()
        manifest = json.loads((version_dir / MANIFEST).read_text())
        assert manifest["sha256"] == provenance["sha256"]["model.tflite"]
        assert metrics["size_ratio"] > (3.0 if method != "float16" else 1.8)
    if method == "prune":
        assert metrics["gzip_size_ratio"] > 1.3  # pruning shrinks the compressed size only
        assert 0.45 < report.steps[0]["zero_weights"] < 0.55
    steps = {s["step"]: s for s in report.steps}
    assert all(s["peak_rss_bytes"] > 20 * 2**20 for s in report.steps)
    # tfmot's TF_USE_LEGACY_KERAS is set for its worker only; the LiteRT validator has no TF
    assert steps.get("tfmot", {}).get("legacy_keras", True)
    assert not steps["validate-source"]["legacy_keras"]
    if method in ("int8", "dynamic", "float16"):
        assert not steps["validate-candidate"]["tensorflow_loaded"]
    assert "TF_USE_LEGACY_KERAS" not in os.environ


def test_the_devserver_serves_every_published_version(models: Path) -> None:
    published = [v for v in versions(models / "m") if v > 1]
    assert len(published) >= 8
    config = models / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "m" base_path: "{models / "m"}" '
                      'model_platform: "tensorflow" model_version_policy { all {} } } }')
    dev = DevServer(f"--model_config_file={config}", "--prefer_tflite_model=true",
                    workdir=models)
    try:
        dev.wait_ready()
        golden = np.load(models / "golden.npz")
        x, y = golden["x"][:40], golden["y"][:40]
        with httpx.Client(base_url=dev.rest_url, timeout=30) as client:
            for version in [1, *published]:
                answer = client.post(f"/v1/models/m/versions/{version}:predict",
                                     json={"instances": x.tolist()})
                manifest = models / "m" / str(version) / MANIFEST
                if manifest.exists() and json.loads(manifest.read_text())["io"] == "int8":
                    # int8 I/O is for edge devices: the server wants quantized inputs
                    assert answer.status_code == 400 and "int8" in answer.json()["error"]
                    continue
                assert answer.status_code == 200, (version, answer.text)
                predictions = np.asarray(answer.json()["predictions"])
                assert (predictions.argmax(1) == y).mean() >= 0.95, version
    finally:
        dev.stop()


def test_a_destroyed_candidate_is_rejected_and_leaves_nothing(models: Path) -> None:
    before = sorted(p.name for p in (models / "m").iterdir())
    report = run(models, "prune_oneshot", sparsity=0.95)
    assert not report.accepted and report.version is None
    assert any("top-1 agreement" in r for r in report.reasons)
    assert any("points below the source" in r for r in report.reasons)
    assert report.steps[0]["zero_weights"] > 0.9
    assert sorted(p.name for p in (models / "m").iterdir()) == before  # no version, no temp dir


def test_requests_that_cannot_work_say_why(models: Path, tmp_path: Path) -> None:
    def refused(**changes: Any) -> str:
        fields = {"source": models / "m" / "1", "method": "int8", "base": models / "m",
                  "golden": models / "golden.npz", **changes}
        with pytest.raises(OptimizeError) as info:
            asyncio.run(optimize(Request(**fields)))
        return str(info.value)

    assert "method: expected one of" in refused(method="magic")
    assert "needs representative inputs" in refused()
    assert "needs training data" in refused(method="cluster")
    assert "not a SavedModel" in refused(source=tmp_path, representative=models / "x.npy")
    assert "golden set" in refused(golden=tmp_path / "none.npz",
                                   representative=models / "representative.npy")
    keras_less = tmp_path / "base" / "1"
    keras_less.mkdir(parents=True)
    (keras_less / "saved_model.pb").write_bytes((models / "m" / "1" / "saved_model.pb")
                                                 .read_bytes())
    with pytest.raises(OptimizeError, match="needs the Keras source model"):
        asyncio.run(optimize(Request(keras_less, "keras_int8", keras_less.parent,
                                     models / "golden.npz")))


def test_a_crashing_or_hanging_worker_fails_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    import tfwarden.optimizers.pipeline as pipeline

    runner = Runner()
    monkeypatch.setattr(pipeline, "WORKER", [sys.executable, "-c", "import os; os._exit(3)"])
    with pytest.raises(OptimizeError, match=r"convert worker died \(exit 3\)"):
        asyncio.run(runner.run({"kind": "convert"}, 30))
    monkeypatch.setattr(pipeline, "WORKER", [sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(OptimizeError, match="convert worker timed out after 1s"):
        asyncio.run(runner.run({"kind": "convert"}, 1))


def test_cli_prints_the_report_and_the_version(models: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tfwarden.daemon", "optimize", str(models / "m" / "1"),
                             "--method", "dynamic", "--golden", str(models / "golden.npz")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["accepted"] and report["metrics"]["top1_agreement"] >= 0.98
    assert f"published version {report['version']} under {models / 'm'}" in result.stderr
    bad = subprocess.run([sys.executable, "-m", "tfwarden.daemon", "optimize", str(models / "m" / "1"),
                          "--method", "int8", "--golden", str(models / "golden.npz")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "tfwarden optimize: method int8 needs representative inputs (--representative FILE)"]


def test_recalibrate_uses_captured_rows_as_csv(models: Path, tmp_path: Path) -> None:
    rows = np.load(models / "representative.npy")[:150]
    captured = tmp_path / "captured.csv"  # what the daemon writes from the capture reservoir
    captured.write_text(",".join(f"x[{i}]" for i in range(64)) + "\n" +
                        "\n".join(",".join(repr(float(v)) for v in row) for row in rows) + "\n")
    report = asyncio.run(optimize(Request(
        source=models / "m" / "1", method="recalibrate", base=models / "m",
        golden=models / "golden.npz", representative=captured, latency_runs=30)))
    assert report.accepted, report.reasons
    assert report.steps[0]["representative_samples"] == 150
