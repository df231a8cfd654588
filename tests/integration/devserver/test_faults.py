"""devserver fault injection creates real, measurable regressions; removing the file restores."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import TESTDATA, DevServer

pytestmark = pytest.mark.integration
TWO = TESTDATA / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"
SETTLE = 0.7  # the fault file is re-read at most every 0.5 s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevServer, Path]]:
    work = tmp_path_factory.mktemp("faults")
    version_dir = work / "m" / "1"
    shutil.copytree(TWO, version_dir)
    dev = DevServer("--model_name=m", f"--model_base_path={work / 'm'}", workdir=work, grpc=False)
    dev.wait_ready()
    yield dev, version_dir
    dev.stop()


def set_faults(version_dir: Path, spec: dict[str, object] | None) -> None:
    path = version_dir / "devserver-faults.json"
    if spec is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(json.dumps(spec))
    time.sleep(SETTLE)


def predict(client: httpx.Client) -> tuple[int, float, dict[str, object]]:
    start = time.monotonic()
    response = client.post("/v1/models/m:predict", json={"instances": [2.0]})
    return response.status_code, (time.monotonic() - start) * 1000, response.json()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_latency_fault_delays_every_request_until_removed(server) -> None:  # type: ignore[no-untyped-def]
    dev, version_dir = server
    logged = len(dev.output())
    with httpx.Client(base_url=dev.rest_url, timeout=10) as client:
        set_faults(version_dir, None)
        base = [predict(client)[1] for _ in range(15)]
        set_faults(version_dir, {"latency": {"fixed_ms": 80}})
        slow = [predict(client)[1] for _ in range(15)]
        set_faults(version_dir, None)
        restored = [predict(client)[1] for _ in range(15)]
    # a sleep never ends early, so this lower bound holds however loaded the machine is (how
    # close to +80 ms the shift is: bench/faults.py)
    assert min(slow) >= 80, slow
    assert statistics.median(base) < statistics.median(slow) > statistics.median(restored), \
        (base, slow, restored)
    changes = [line.split("tfwarden.devserver.faults: ")[1] for line in
               dev.output()[logged:].splitlines() if "tfwarden.devserver.faults: " in line]
    assert changes[-2:] == [f"faults active for {version_dir}: {{'latency': {{'fixed_ms': 80.0}}}}",
                            f"faults removed for {version_dir}"]  # the restored requests had none


def test_error_fault_rate_is_within_binomial_tolerance(server) -> None:  # type: ignore[no-untyped-def]
    dev, version_dir = server
    n, rate = 300, 0.2
    with httpx.Client(base_url=dev.rest_url, timeout=10) as client:
        set_faults(version_dir, {"error": {"rate": rate, "code": "UNAVAILABLE",
                                           "message": "injected outage"}, "seed": 3})
        results = [predict(client) for _ in range(n)]
        set_faults(version_dir, None)
        after = [predict(client)[0] for _ in range(20)]
    errors = [r for r in results if r[0] != 200]
    sd = (n * rate * (1 - rate)) ** 0.5
    assert abs(len(errors) - n * rate) <= 4 * sd, len(errors)
    assert all(status == 503 and body == {"error": "injected outage"} for status, _, body in errors)
    assert after == [200] * 20
    metrics = httpx.get(dev.rest_url + "/monitoring/prometheus/metrics")
    assert metrics.status_code == 404  # no --monitoring_config_file: TF Serving 404s too


def test_leak_fault_grows_process_rss(server) -> None:  # type: ignore[no-untyped-def]
    dev, version_dir = server
    with httpx.Client(base_url=dev.rest_url, timeout=10) as client:
        before = rss_bytes(dev.proc.pid)
        set_faults(version_dir, {"leak": {"bytes_per_request": 2 * 1024 * 1024}})
        for _ in range(40):
            assert predict(client)[0] == 200
        grown = rss_bytes(dev.proc.pid) - before
        set_faults(version_dir, None)
        for _ in range(20):
            predict(client)
        after_removal = rss_bytes(dev.proc.pid) - before
    assert grown >= 70 * 1024 * 1024, grown  # 80 MB retained
    assert after_removal < grown + 10 * 1024 * 1024  # no further growth once removed


def test_output_fault_perturbs_predictions(server) -> None:  # type: ignore[no-untyped-def]
    dev, version_dir = server
    with httpx.Client(base_url=dev.rest_url, timeout=10) as client:
        set_faults(version_dir, {"output": {"scale": 2.0, "offset": 1.0}})
        _, _, body = predict(client)
        set_faults(version_dir, None)
        _, _, clean = predict(client)
    assert body == {"predictions": [7.0]}  # (0.5*2 + 2) * 2 + 1
    assert clean == {"predictions": [3.0]}


def test_invalid_fault_file_is_ignored_with_a_log_line(server) -> None:  # type: ignore[no-untyped-def]
    dev, version_dir = server
    with httpx.Client(base_url=dev.rest_url, timeout=10) as client:
        set_faults(version_dir, {"latency": {"fixed_ms": -5}})
        status, _, body = predict(client)
        set_faults(version_dir, None)
    assert (status, body) == (200, {"predictions": [3.0]})
    assert "ignoring invalid fault file" in dev.output()
