"""A real `tfwarden run` process on a free loopback port."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import DaemonProcess, free_port

pytestmark = pytest.mark.integration

Factory = Callable[..., DaemonProcess]


def metric(daemon: DaemonProcess, name: str) -> float:
    text = daemon.client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return float(sample.value)
    raise AssertionError(f"{name} not exposed")


def job(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    jobs = daemon.client.get("/api/v1/status").json()["jobs"]
    return dict(next(j for j in jobs if j["name"] == name))


def test_ready_metrics_reload_and_sigterm(daemon_factory: Factory, tmp_path: Path) -> None:
    daemon = daemon_factory()
    daemon.wait_ready()

    families = {f.name: f for f in text_string_to_metric_families(daemon.client.get("/metrics").text)}
    assert families["tfwarden_ready"].samples[0].value == 1
    assert "tfwarden_config_last_reload_successful" in families
    assert daemon.client.get("/-/healthy").json() == {"status": "healthy"}

    status = daemon.client.get("/api/v1/status").json()
    assert status["ready"] is True and status["config"]["generation"] == 1
    assert {j["name"] for j in status["jobs"]} >= {"heartbeat", "state-checkpoint"}
    assert status["process"]["heavy_modules_loaded"] == []  # the lean-process rule

    config = tmp_path / "tfwarden.yaml"
    good = config.read_text()
    config.write_text(good + "not_a_field: true\n")
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while metric(daemon, "tfwarden_config_last_reload_successful") != 0:
        assert time.monotonic() < deadline, daemon.stderr()
        time.sleep(0.05)
    assert daemon.client.get("/-/ready").status_code == 200  # still serving the old config
    assert daemon.client.get("/api/v1/status").json()["config"]["generation"] == 1
    errors = [line for line in daemon.stderr().splitlines() if "reload (SIGHUP) failed" in line]
    assert len(errors) == 1 and "not_a_field (line" in errors[0]

    config.write_text(good)
    answer = daemon.client.post("/-/reload")
    assert answer.status_code == 200 and answer.json() == {"ok": True, "generation": 2}
    assert metric(daemon, "tfwarden_config_last_reload_successful") == 1

    deadline = time.monotonic() + 30  # the heartbeat job runs at least once
    while (heartbeat := job(daemon, "heartbeat"))["runs"] < 1:
        assert time.monotonic() < deadline, heartbeat
        time.sleep(0.05)
    assert heartbeat["last_outcome"] == "success"

    code, _ = daemon.terminate(timeout=30)  # how fast: bench/daemon_footprint.py
    assert code == 0
    assert "Traceback" not in daemon.stderr()
    journal = sqlite3.connect(tmp_path / "state" / "state.db").execute(
        "SELECT kind FROM journal ORDER BY id").fetchall()
    kinds = [k for (k,) in journal]
    assert kinds[:2] == ["daemon_starting", "config_loaded"]
    assert "config_reload_failed" in kinds and kinds[-1] == "daemon_stopped"


def test_sigterm_during_an_idle_run_waits_for_nothing(daemon_factory: Factory,
                                                      tmp_path: Path) -> None:
    daemon = daemon_factory()
    daemon.wait_ready()
    code, _ = daemon.terminate(timeout=30)  # a guard against a hang only
    assert code == 0
    # no in-flight job to wait for (the drain logs "waiting up to ..."), no HTTP connection
    # outliving uvicorn's graceful timeout (an error), nothing cancelled (the speed itself:
    # bench/daemon_footprint.py)
    shutdown = daemon.stderr().split("received SIGTERM, shutting down")[1].splitlines()[1:]
    assert not [line for line in shutdown
                if "waiting up to" in line or line.split(" ", 2)[1:2] == ["ERROR"]], shutdown
    assert shutdown[-1].endswith("tfwarden.daemon: stopped"), shutdown
    stopped = sqlite3.connect(tmp_path / "state" / "state.db").execute(
        "SELECT payload FROM journal WHERE kind = 'daemon_stopped'").fetchall()
    assert [json.loads(payload)["cancelled_jobs"] for (payload,) in stopped] == [0]


def startup_failure(tmp_path: Path, port: int) -> tuple[int, list[str]]:
    """Run `tfwarden run` expecting it to fail at start-up; return (exit status, stderr lines)."""
    config = tmp_path / "c.yaml"
    config.write_text(f"server: {{listen: '127.0.0.1:{port}'}}\nstate_dir: {tmp_path}/s\n")
    daemon = DaemonProcess(config, port)
    code = daemon.proc.wait(timeout=30)
    daemon.close()
    return code, daemon.stderr().strip().splitlines()


def test_port_in_use_is_a_one_line_startup_error(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        code, lines = startup_failure(tmp_path, port)
    assert code == 1
    assert len(lines) == 1 and "Address already in use" in lines[0], lines


def test_corrupt_state_is_a_one_line_startup_error(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "state.db").write_bytes(b"garbage" * 1000)
    code, lines = startup_failure(tmp_path, free_port())
    assert code == 1
    assert len(lines) == 1 and "corrupt or not a tfwarden state database" in lines[0], lines


def test_bearer_token_protects_reload(daemon_factory: Factory, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0ken\n")
    daemon = daemon_factory(extra="")
    daemon.wait_ready()
    daemon.terminate()
    config = tmp_path / "tfwarden.yaml"
    port = free_port()
    config.write_text(f"server:\n  listen: 127.0.0.1:{port}\n  bearer_token_file: token\n"
                      f"state_dir: {tmp_path / 'state'}\n")
    secured = DaemonProcess(config, port)
    try:
        secured.wait_ready()
        assert secured.client.post("/-/reload").status_code == 401
        ok = secured.client.post("/-/reload", headers={"Authorization": "Bearer t0ken"})
        assert ok.status_code == 200
    finally:
        secured.close()


def test_metrics_pass_promtool_lint(daemon_factory: Factory) -> None:
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install prometheus); scripts/test installs it")
    daemon = daemon_factory()
    daemon.wait_ready()
    text = daemon.client.get("/metrics").text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    import subprocess

    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def _served_by(port: int, ca: Path) -> bool:
    """A new TLS connection to the daemon verifies against ``ca`` (and answers /-/healthy)."""
    import httpx

    try:
        with httpx.Client(verify=_trusting(ca), timeout=5.0) as client:
            return client.get(f"https://127.0.0.1:{port}/-/healthy").status_code == 200
    except httpx.ConnectError:
        return False


def test_tls_serves_https_and_a_reload_loads_a_renewed_certificate(tmp_path: Path) -> None:
    import shutil

    import httpx

    first, second = _self_signed(tmp_path, "first"), _self_signed(tmp_path, "second")
    shutil.copy(first[0], tmp_path / "tls.crt")
    shutil.copy(first[1], tmp_path / "tls.key")
    (tmp_path / "token").write_text("t0ken\n")
    port = free_port()
    config = tmp_path / "tfwarden.yaml"
    config.write_text(f"server:\n  listen: 127.0.0.1:{port}\n  bearer_token_file: token\n"
                      f"  tls_cert_file: tls.crt\n  tls_key_file: tls.key\n"
                      f"state_dir: {tmp_path / 'state'}\n")
    daemon = DaemonProcess(config, port)
    daemon.client = httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=_trusting(first[0]),
                                 timeout=5.0)
    try:
        daemon.wait_ready()
        with pytest.raises(httpx.TransportError):  # plain HTTP gets no answer from a TLS port
            httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=5.0)
        assert _served_by(port, first[0]) and not _served_by(port, second[0])

        shutil.copy(second[0], tmp_path / "tls.crt")  # renewed: a reload takes it
        shutil.copy(second[1], tmp_path / "tls.key")
        token = {"Authorization": "Bearer t0ken"}
        assert daemon.client.post("/-/reload", headers=token).status_code == 200
        assert _served_by(port, second[0]) and not _served_by(port, first[0])

        (tmp_path / "tls.crt").write_text("not a certificate\n")  # broken: refused, kept
        with httpx.Client(verify=_trusting(second[0]), timeout=5.0) as client:
            refused = client.post(f"https://127.0.0.1:{port}/-/reload", headers=token)
        assert refused.status_code == 400, refused.text
        assert "server.tls_cert_file" in refused.json()["error"]
        assert _served_by(port, second[0])
    finally:
        daemon.close()
