"""The daemon probing a real devserver: per-version latency, status, memory, failures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import TESTDATA, DaemonProcess, DevServer, daemon_config, free_port

pytestmark = pytest.mark.integration
MODEL = TESTDATA / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"


def models_config(base: Path, versions: list[int]) -> str:
    listed = " ".join(f"versions: {v}" for v in versions)
    return (f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
            f'model_platform: "tensorflow" model_version_policy {{ specific {{ {listed} }} }} }} }}')


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("probing")
    base = work / "models" / "m"
    for version in (1, 2):
        shutil.copytree(MODEL, base / str(version))
    (base / "2" / "devserver-faults.json").write_text(json.dumps({"latency": {"fixed_ms": 30}}))
    config = work / "models.config"
    config.write_text(models_config(base, [1, 2]))
    dev = DevServer(f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                    workdir=work)
    dev.wait_ready()
    (work / "dev.pid").write_text(str(dev.proc.pid))
    (work / "golden.jsonl").write_text(json.dumps(
        {"request": {"instances": [2.0]}, "expected": {"predictions": [3.0]}}) + "\n")
    port = free_port()
    daemon = DaemonProcess(daemon_config(
        work, port, dev,
        models=[{"name": "m", "golden_requests": "golden.jsonl", "probe": {"rate_per_second": 20}}],
        memory=[{"name": "devserver", "pid_file": "dev.pid", "interval_seconds": 1}],
        capture={"client_rows_per_second": 1000, "reservoir_rows": 100,
                 "max_body_bytes": 100000}), port)
    daemon.wait_ready()
    yield {"dev": dev, "daemon": daemon, "base": base, "config": config, "work": work}
    daemon.terminate()
    daemon.close()
    dev.stop()


def targets(daemon: DaemonProcess) -> dict[int, dict[str, Any]]:
    return {t["version"]: t for t in daemon.client.get("/debug/probes").json()["predict"]}


def wait_for(predicate: Any, timeout: float = 60.0) -> None:  # a guard against a hang only
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_each_version_is_probed_and_the_slow_one_shows(setup: dict[str, Any]) -> None:
    daemon = setup["daemon"]
    def enough() -> bool:
        current = targets(daemon)
        return len(current) == 2 and all(t["samples"] >= 40 for t in current.values())

    wait_for(enough)
    by_version = targets(daemon)
    assert by_version[1]["outcomes"] == {"ok": by_version[1]["samples"]}
    summary = {v: (t["p50_ms"], t["p99_ms"], t["mean_ms"], t["outcomes"]) for v, t in by_version.items()}
    # the fault sleeps 30 ms in every request to version 2 (a sleep never ends early, so the
    # lower bound holds on any machine; the size of the shift: bench/faults.py); probes of the
    # two versions are interleaved, so version 1's median is the lower one
    assert by_version[2]["p50_ms"] >= 30, summary
    assert by_version[1]["p50_ms"] < by_version[2]["p50_ms"], summary
    status = daemon.client.get("/api/v1/status").json()
    assert status["process"]["heavy_modules_loaded"] == []  # gRPC + protos, still no TF


def test_slow_canary_is_a_latency_regression_finding(setup: dict[str, Any]) -> None:
    daemon = setup["daemon"]

    def latency_finding() -> dict[str, Any] | None:
        findings = daemon.client.get("/api/v1/findings").json()["findings"]
        return next((f for f in findings if f["detector"] == "latency"), None)

    wait_for(lambda: (latency_finding() or {}).get("verdict") == "regression", timeout=30)
    finding = latency_finding()
    assert finding is not None
    assert finding["model"] == "m" and finding["version"] == 2 and finding["target"] == "v1"
    assert finding["effect"]["median_ratio"] > 1  # version 2 is the slower one
    low, high = finding["effect"]["median_ratio_ci"]
    assert low <= finding["effect"]["median_ratio"] <= high
    families = {f.name: f for f in text_string_to_metric_families(daemon.client.get("/metrics").text)}
    current = {(s.labels["detector"], s.labels["verdict"]): s.value
               for s in families["tfwarden_finding"].samples if s.labels["version"] == "2"}
    assert current[("latency", "regression")] == 1 and current[("latency", "ok")] == 0
    errors = next(f for f in daemon.client.get("/api/v1/findings").json()["findings"]
                  if f["detector"] == "errors")
    assert errors["verdict"] in ("ok", "inconclusive")


def test_grpc_predict_probe_against_the_devserver(setup: dict[str, Any]) -> None:
    import asyncio

    from tfwarden.probes.golden import GoldenRequest
    from tfwarden.probes.grpc_predict import GrpcPredictProbe
    from tfwarden.serving.tfserving.client import Channels, TFServingClient

    golden = (GoldenRequest(request={"instances": [2.0]}, expected={"predictions": [3.0]}),)
    wrong = (GoldenRequest(request={"inputs": [2.0]}, expected={"outputs": [9.0]}),)

    async def scenario():  # type: ignore[no-untyped-def]
        channels = Channels()
        dev = TFServingClient("dev", grpc_address=setup["dev"].grpc_address, rest_url=None,
                              channels=channels)
        nowhere = TFServingClient("nowhere", grpc_address=f"127.0.0.1:{free_port()}",
                                  rest_url=None, channels=channels, timeout_seconds=1)
        try:
            v1 = await GrpcPredictProbe(dev, "m", version=1, golden=golden).send()
            v2 = await GrpcPredictProbe(dev, "m", version=2, golden=golden).send()
            missing = await GrpcPredictProbe(dev, "m", version=9, golden=golden).send()
            incorrect = await GrpcPredictProbe(dev, "m", version=1, golden=wrong).send()
            unreachable = await GrpcPredictProbe(nowhere, "m", golden=golden,
                                                 timeout_seconds=1).send()
        finally:
            await channels.close()
        return v1, v2, missing, incorrect, unreachable

    v1, v2, missing, incorrect, unreachable = asyncio.run(scenario())
    assert v1.ok and v1.labels["served_version"] == "1"
    assert v2.ok and v2.value >= 30  # version 2's latency fault
    assert missing.labels["outcome"] == "error" and missing.labels["status"] == "NOT_FOUND"
    assert incorrect.labels["outcome"] == "incorrect"
    assert unreachable.labels["outcome"] in ("unreachable", "timeout")


def test_status_and_memory_are_exported(setup: dict[str, Any]) -> None:
    daemon = setup["daemon"]
    wait_for(lambda: "memory:devserver" in daemon.client.get("/debug/probes").json()["recent"])
    families = {f.name: f for f in text_string_to_metric_families(
        daemon.client.get("/metrics").text)}
    states = {s.labels["version"]: s.value for s in families["tfwarden_model_version_state"].samples}
    assert states == {"1": 30.0, "2": 30.0}
    memory = {s.labels["kind"]: s.value for s in families["tfwarden_memory_bytes"].samples}
    assert memory["rss"] > 100 * 2**20
    requests = {(s.labels["version"], s.labels["outcome"]): s.value
                for s in families["tfwarden_probe_requests"].samples}
    assert requests[("1", "ok")] > 0 and requests[("2", "ok")] > 0


def test_failures_are_recorded_as_data(setup: dict[str, Any]) -> None:
    daemon, base = setup["daemon"], setup["base"]
    fault = base / "1" / "devserver-faults.json"
    fault.write_text(json.dumps({"error": {"rate": 1.0, "code": "UNAVAILABLE"}}))
    try:
        wait_for(lambda: targets(daemon)[1]["outcomes"].get("error", 0) >= 10)
    finally:
        fault.unlink()
    assert targets(daemon)[2]["outcomes"].get("error", 0) == 0


def canary_pairs(daemon: DaemonProcess) -> int | None:
    """Evidence (pairs) of the canary latency finding, None when there is none."""
    found = [f for f in daemon.client.get("/api/v1/findings").json()["findings"]
             if f["detector"] == "latency" and (f["version"], f["target"]) == (2, "v1")]
    return found[0]["evidence"].get("pairs") if found else None


def test_a_reload_keeps_detector_evidence_unless_the_detectors_settings_change(
        setup: dict[str, Any]) -> None:
    daemon, path = setup["daemon"], setup["work"] / "tfwarden.yaml"
    wait_for(lambda: (canary_pairs(daemon) or 0) >= 20)
    before = canary_pairs(daemon)
    assert daemon.client.post("/-/reload").json()["ok"]  # the same configuration
    assert (canary_pairs(daemon) or 0) >= before  # kept, not rebuilt from nothing
    wait_for(lambda: (canary_pairs(daemon) or 0) > before)
    original = path.read_text()
    changed = yaml.safe_load(original)
    changed["detection"] = {"latency": {"effect_floor": 0.2}}
    path.write_text(yaml.safe_dump(changed))
    try:
        assert daemon.client.post("/-/reload").json()["ok"]
        assert (canary_pairs(daemon) or 0) < before  # new settings: the evidence starts again
    finally:
        path.write_text(original)
        assert daemon.client.post("/-/reload").json()["ok"]


def test_unloaded_version_stops_being_probed(setup: dict[str, Any]) -> None:
    daemon, config, base = setup["daemon"], setup["config"], setup["base"]
    config.write_text(models_config(base, [1]))
    wait_for(lambda: 2 not in targets(daemon))

    def states() -> dict[int, str]:
        status = daemon.client.get("/debug/probes").json()["status"]["m"]["versions"]
        return {v["version"]: v["state"] for v in status}

    # Probing stops as soon as version 2 leaves AVAILABLE (UNLOADING); END follows once the
    # unload finishes and the next status poll sees it.
    wait_for(lambda: states().get(2) == "END")
    assert states() == {2: "END", 1: "AVAILABLE"}
    assert 2 not in targets(daemon)


def test_capture_validates_against_the_live_signature(setup: dict[str, Any]) -> None:
    client = setup["daemon"].client
    ok = client.post("/api/v1/capture/m", json={"instances": [[1.0], [2.0]]})
    assert ok.status_code == 200 and ok.json()["accepted_rows"] == 2
    columnar = client.post("/api/v1/capture/m?version=2", json={"inputs": [[1.0], [2.0], [3.0]]})
    assert columnar.json()["accepted_rows"] == 3
    bad_shape = client.post("/api/v1/capture/m", json={"instances": [[1.0, 2.0]]})
    assert bad_shape.status_code == 400
    assert bad_shape.json() == {"error": "instances[0]: shape [2] does not fit the signature's "
                                         "[-1, 1] for input 'x'"}
    bad_type = client.post("/api/v1/capture/m", json={"instances": [["a"]]})
    assert bad_type.status_code == 400 and "expected a number (float)" in bad_type.json()["error"]
    assert client.post("/api/v1/capture/nope", json={"instances": [[1.0]]}).status_code == 404
    assert client.post("/api/v1/capture/m", content=b"{nope").status_code == 400
    too_big = client.post("/api/v1/capture/m", content=b"[" + b"1," * 60000 + b"1]")
    assert too_big.status_code == 413
    samples = client.post("/api/v1/samples/m", json={"version": 1, "features": ["x"],
                                                       "rows": [[0.5]] * 700})
    assert samples.status_code == 200
    limited = client.post("/api/v1/samples/m", json={"rows": [[0.5]] * 700})
    assert limited.status_code == 429 and "rows/s" in limited.json()["error"]
    stats = client.get("/api/v1/models/m/capture").json()
    assert stats["features"] == ["x"]
    kept = {r["version"]: (r["kept_rows"], r["seen_rows"]) for r in stats["reservoirs"]}
    assert kept[1] == (100, 700)  # bounded by reservoir_rows
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    counts = {(s.labels["outcome"], s.labels["status"]): s.value
              for s in families["tfwarden_capture_rows"].samples}
    assert counts[("accepted", "200")] == 705
    assert counts[("rejected", "400")] >= 3 and counts[("rejected", "429")] == 1


def test_demo_command_tells_the_story_and_exits_0() -> None:
    result = subprocess.run([sys.executable, "-m", "tfwarden.daemon", "demo"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in ("adopted half_plus_two", "FINDING latency regression v2 vs v1",
                     "decision rollback-canary-on-regression", "rolled back",
                     "alert firing", "alert resolved", "set_weight {'weight': 100}",
                     "version 3 promoted"):
        assert expected in out, (expected, out)
