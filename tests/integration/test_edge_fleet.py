"""A simulated fleet (tfwarden.daemon.fleet: the OpenTelemetry SDK's OTLP/HTTP exporters and a
LiteRT interpreter per model file) against a running daemon: per version and cohort the daemon
counts exactly the devices, inferences, failed inferences, loads, error logs and exception
types the simulator sent, and a cohort made 2x slower on version 2 shows it in its p50. Then
devices ask the daemon's assignment endpoint, download the published file (sha256 and size
checked) and switch when an operator starts a rollout."""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import DaemonProcess, daemon_config, free_port
from tfwarden.daemon.fleet import Fleet, Profile, Profiles, fixed_assignment, publish_version

pytestmark = pytest.mark.integration
INGEST, OPERATOR = "ingest-secret", "operator-secret"
DELEGATES, DEVICE_MODELS = ("gpu", "xnnpack"), ("pixel-8", "galaxy-s23")
SLOW = "ml.delegate=gpu | device.model.identifier=pixel-8"


def start_daemon(work: Path, **edge: Any) -> DaemonProcess:
    (work / "token").write_text(OPERATOR + "\n")
    (work / "ingest").write_text(INGEST + "\n")
    port = free_port()
    config = daemon_config(
        work, port, server={"listen": f"127.0.0.1:{port}", "bearer_token_file": "token",
                            "ingest_token_file": "ingest"},
        edge={"client_points_per_second": 1_000_000, **edge})
    process = DaemonProcess(config, port)
    try:
        process.wait_ready()
    except BaseException:
        process.close()
        raise
    return process


@pytest.fixture()
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    process = start_daemon(tmp_path, models=[
        {"name": "fleet", "cohort_by": ["ml.delegate", "device.model.identifier"]}])
    try:
        yield process
    finally:
        process.close()


def version_of(device_id: str) -> int:
    return 1 + zlib.crc32(device_id.encode()) % 2


def test_daemon_counts_exactly_what_the_fleet_sent(daemon: DaemonProcess) -> None:
    started = time.monotonic()
    profile = Profiles(Profile(latency_ms=8, sigma=0.2, error_rate=0.002, crash_rate=0.01),
                       {(2, SLOW): Profile(latency_ms=8, sigma=0.2, multiplier=2.0,
                                           error_rate=0.05, crash_rate=0.05,
                                           error_types=("DelegateError", "OutOfMemory"))})
    fleet = Fleet(daemon.base_url, "fleet", Fleet.grid(150, DELEGATES, DEVICE_MODELS),
                  token=INGEST, seed=2024, profile=profile, inferences=10, timeout=10,
                  assignment=fixed_assignment(version_of))
    with fleet:
        reports = [fleet.report_round() for _ in range(3)]
    assert all(r.devices == 600 and r.exports_failed == 0 and r.log_exports_failed == 0
               for r in reports), reports
    assert fleet.wrong_outputs == 0  # every invoke() gave 0.5 * x + 2
    assert time.monotonic() - started < 45

    answer = daemon.client.get("/api/v1/edge/fleet")
    assert answer.status_code == 200, answer.text
    seen, sent = answer.json()["versions"], fleet.tallies()
    assert set(seen) == set(sent) == {"1", "2"}
    for version, cohorts in sent.items():
        assert set(seen[version]) == set(cohorts)
        for name, tally in cohorts.items():
            got = seen[version][name]
            assert {k: got[k] for k in ("devices", "inferences", "failed_inferences", "loads",
                                        "error_logs", "exceptions")} == \
                   {k: tally[k] for k in ("devices", "inferences", "failed_inferences", "loads",
                                          "error_logs", "exceptions")}, (version, name)
    assert sum(c["devices"] for v in seen.values() for c in v.values()) == 600

    slow = seen["2"][SLOW]
    others = [c["inference_p50_ms"] for v, cohorts in seen.items() for n, c in cohorts.items()
              if (v, n) != ("2", SLOW)]
    assert all(6 < p50 < 10 for p50 in others), others
    ratio = slow["inference_p50_ms"] / (sum(others) / len(others))
    print(f"slow cohort p50 {slow['inference_p50_ms']} ms, others {others}: {ratio:.2f}x")
    assert 1.6 < ratio < 2.5, (slow, others)
    assert slow["failed_inferences"] > 3 * max(c["failed_inferences"] for v, cohorts in
                                               seen.items() for n, c in cohorts.items()
                                               if (v, n) != ("2", SLOW))
    assert set(slow["exceptions"]) <= {"DelegateError", "OutOfMemory", "SIGSEGV"}
    assert slow["exceptions"]["SIGSEGV"] == sent["2"][SLOW]["crashes"] > 0
    status = daemon.client.get("/api/v1/status").json()
    assert status["process"]["heavy_modules_loaded"] == []


def test_devices_follow_the_daemons_assignments(tmp_path: Path) -> None:
    publish_version(tmp_path / "fleet", 1)
    process = start_daemon(tmp_path, models=[{
        "name": "fleet", "cohort_by": ["ml.delegate"], "base_path": str(tmp_path / "fleet"),
        "rollout": {"steps": [50, 100], "auto_start": False}}])
    try:
        fleet = Fleet.for_daemon(process.base_url, "fleet", Fleet.grid(10, DELEGATES, ["p"]),
                                 token=INGEST, seed=1, inferences=3,
                                 cohort_by=["ml.delegate"])
        with fleet:
            first = fleet.report_round()
            assert (first.switched, first.assign_failed, first.exports_failed) == (20, 0, 0)
            assert fleet.store.downloads == 1  # one download per file (sha256), checked
            assert {d.version for d in fleet.devices} == {1}
            assert {d.assignment.cohort for d in fleet.devices if d.assignment} == {
                "ml.delegate=gpu", "ml.delegate=xnnpack"}

            publish_version(tmp_path / "fleet", 2)
            started = process.client.post("/api/v1/edge/fleet/rollout/start",
                                          json={"version": 2},
                                          headers={"Authorization": f"Bearer {OPERATOR}"})
            assert started.status_code == 200, started.text
            switched, failed = fleet.assign(force=True)  # before their TTL: ask now
            assert failed == 0 and 0 < switched < 20
            fleet.report_round(assign=False)
            on_two = {d.spec.device_id for d in fleet.devices if d.version == 2}
            assert len(on_two) == switched
        seen = process.client.get("/api/v1/edge/fleet").json()["versions"]
        assert sum(c["devices"] for c in seen["2"].values()) == switched
        assert sum(c["devices"] for c in seen["1"].values()) == 20
        sent = fleet.tallies()
        for version in ("1", "2"):
            for name, tally in sent[version].items():
                assert seen[version][name]["inferences"] == tally["inferences"]
    finally:
        process.close()
