"""The operator commands against a real daemon: a devserver serving model ``m`` version 1,
tfwarden managing it with a rule that decides while it is stable, and a bearer token for writes.
Every command runs as its own ``tfwarden`` process, as an operator or a script would run it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import TESTDATA, DaemonProcess, DevServer, daemon_config, free_port
from tests.integration.test_daemon_process import _self_signed

pytestmark = pytest.mark.integration
MODEL = TESTDATA / "tfserving" / "saved_model_half_plus_two_cpu" / "00000123"
TOKEN = "s3cret-operator-token"
RULES = """rules:
  - name: hold-while-stable-is-healthy
    when:
      status: {phase: [stable]}
      any:
        - {detector: burn, verdict: ok, role: stable, min_samples: 5}
    action: hold
    guards: {cooldown_seconds: 5}
"""
CONSOLE_SCRIPT = Path(sys.executable).parent / "tfwarden"
TFWARDEN = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "tfwarden.daemon"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("operator-cli")
    base = work / "models" / "m"
    shutil.copytree(MODEL, base / "1")
    (work / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
    (work / "golden.jsonl").write_text(json.dumps(
        {"request": {"instances": [2.0]}, "expected": {"predictions": [3.0]}}) + "\n")
    (work / "rules.yaml").write_text(RULES)
    (work / "token").write_text(TOKEN + "\n")
    dev = DevServer(f"--model_config_file={work / 'models.config'}", workdir=work)
    dev.wait_ready()
    port = free_port()
    config = daemon_config(
        work, port, dev, model_config_file="./models.config",
        server={"listen": f"127.0.0.1:{port}", "bearer_token_file": "token"},
        models=[{"name": "m", "golden_requests": "golden.jsonl",
                 "probe": {"address": "labels", "labels": ["stable"], "rate_per_second": 10,
                           "timeout_seconds": 1},
                 "lifecycle": {"version_poll_seconds": 1}}],
        policies={"ruleset": "rules.yaml"})
    daemon = DaemonProcess(config, port)
    try:
        daemon.wait_ready()
        wait_until(lambda: _model(daemon).get("decisions"), 30, "a first decision", daemon)
        yield {"daemon": daemon, "work": work, "url": daemon.base_url}
    finally:
        daemon.terminate()
        daemon.close()
        dev.stop()


def _model(daemon: DaemonProcess) -> dict[str, Any]:
    response = daemon.client.get("/api/v1/models/m")
    return response.json() if response.status_code == 200 else {}


def wait_until(predicate: Any, timeout: float, what: str, daemon: DaemonProcess) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s: {_model(daemon)}\n"
                                 f"{daemon.stderr()[-3000:]}")
        time.sleep(0.25)


def tfwarden(stack: dict[str, Any], *args: str, token: str | None = None,
             url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TFWARDEN_")}
    env["TFWARDEN_URL"] = url or stack["url"]
    if token is not None:
        env["TFWARDEN_TOKEN"] = token
    return subprocess.run([*TFWARDEN, *args], capture_output=True, text=True, env=env, timeout=30)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tfwarden: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_status_table_json_and_tree(stack: dict[str, Any]) -> None:
    table = tfwarden(stack, "status")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:7] == ["MODEL", "PHASE", "STABLE", "CANARY", "PREVIOUS", "WEIGHT", "SINCE"]
    assert row.split()[:6] == ["m", "stable", "1", "-", "-", "0%"]
    assert "hold-while-stable-is-healthy: hold" in row

    listed = json.loads(tfwarden(stack, "status", "-o", "json").stdout)
    assert listed["models"][0]["model"] == "m" and listed["models"][0]["stable_version"] == 1

    tree = tfwarden(stack, "status", "m")
    assert tree.returncode == 0, tree.stderr
    lines = tree.stdout.splitlines()
    assert lines[0].startswith("m  stable for ")
    assert "├─ versions: stable 1, canary -, previous -" in lines
    assert "├─ awaiting approval: -" in lines
    assert any("hold-while-stable-is-healthy: hold - " in line for line in lines)
    assert any(line.lstrip("│ ├└─").startswith("burn v1 vs slo: ok  burn_rate") for line in lines), \
        tree.stdout

    detail = json.loads(tfwarden(stack, "status", "m", "-o", "json").stdout)
    assert detail["model"] == "m" and detail["decisions"] and "findings" in detail


def test_findings(stack: dict[str, Any]) -> None:
    result = tfwarden(stack, "findings", "m")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["DETECTOR", "MODEL", "VERSION", "TARGET", "VERDICT", "STATISTIC",
                              "VALUE", "THRESHOLD", "SAMPLES", "REASON"]
    assert any(r.split()[:5] == ["burn", "m", "1", "slo", "ok"] for r in rows), result.stdout
    found = json.loads(tfwarden(stack, "findings", "-o", "json").stdout)["findings"]
    assert {f["detector"] for f in found} >= {"burn"}


def test_journal_last_entries_and_kind(stack: dict[str, Any]) -> None:
    result = tfwarden(stack, "journal", "--limit", "3")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    everything = stack["daemon"].client.get("/api/v1/journal", params={"limit": 1000}).json()["entries"]
    assert [int(line.split()[0]) for line in result.stdout.splitlines()] == \
        [e["id"] for e in everything[-3:]]  # the latest three, oldest first

    decisions = tfwarden(stack, "journal", "m", "--kind", "decision", "-o", "json")
    entries = [json.loads(line) for line in decisions.stdout.splitlines()]
    assert entries and {e["kind"] for e in entries} == {"decision"}
    assert entries[-1]["payload"]["rule"] == "hold-while-stable-is-healthy"


def test_pause_and_resume_need_the_token(stack: dict[str, Any]) -> None:
    refused = tfwarden(stack, "pause", "m")
    assert refused.returncode == 5
    assert "missing bearer token" in one_error_line(refused)
    wrong = tfwarden(stack, "pause", "m", token="wrong")
    assert wrong.returncode == 5 and "bearer token is not valid" in one_error_line(wrong)

    follower = subprocess.Popen([*TFWARDEN, "journal", "m", "--follow", "--kind", "manual_action",
                                 "--url", stack["url"]], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(20, follower.kill)  # a follower that never prints fails, not hangs
    guard.start()
    try:
        time.sleep(1.0)  # it has printed what there was and polls
        paused = tfwarden(stack, "pause", "m", token=TOKEN)
        assert paused.returncode == 0, paused.stderr
        assert paused.stdout.startswith("m: pause done; now paused, stable 1")
        assert follower.stdout is not None
        line = follower.stdout.readline()  # blocks until the new entry is printed
        assert "manual_action" in line and "action=pause" in line
    finally:
        guard.cancel()
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=10)
    assert follower.returncode == 0 and "Traceback" not in err

    resumed = tfwarden(stack, "resume", "m", "--token-file", str(stack["work"] / "token"))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(tfwarden(stack, "status", "m", "-o", "json").stdout)["phase"] == "stable"


def test_refusals_and_failures_have_exit_codes(stack: dict[str, Any]) -> None:
    nothing = tfwarden(stack, "promote", "m", token=TOKEN)
    assert nothing.returncode == 3
    assert one_error_line(nothing).startswith("tfwarden: promote m refused: ")
    approve = tfwarden(stack, "approve", "m", token=TOKEN)
    assert approve.returncode == 3 and "no decision awaiting approval" in one_error_line(approve)

    unknown = tfwarden(stack, "status", "nosuch")
    assert unknown.returncode == 4
    assert one_error_line(unknown) == "tfwarden: model 'nosuch' is not managed by tfwarden (HTTP 404)"
    assert tfwarden(stack, "rollback", "nosuch", token=TOKEN).returncode == 4

    down = tfwarden(stack, "status", url=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1
    assert "cannot reach the daemon at http://127.0.0.1:" in one_error_line(down)
    assert tfwarden(stack, "status", "--bogus").returncode == 2


def test_watch_redraws_until_ctrl_c(stack: dict[str, Any]) -> None:
    watcher = subprocess.Popen([*TFWARDEN, "status", "--watch", "--url", stack["url"]],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)  # two frames, 2 s apart
    watcher.send_signal(signal.SIGINT)
    out, err = watcher.communicate(timeout=10)
    assert watcher.returncode == 0 and err == ""
    assert out.count("MODEL  ") >= 2


def test_https_with_a_private_ca(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "tfwarden")
    port = free_port()
    config = daemon_config(tmp_path, port, server={
        "listen": f"127.0.0.1:{port}", "tls_cert_file": str(cert), "tls_key_file": str(key)})
    daemon = DaemonProcess(config, port)
    daemon.client = httpx.Client(base_url=f"https://127.0.0.1:{port}",
                                 verify=ssl.create_default_context(cafile=str(cert)), timeout=5.0)
    try:
        daemon.wait_ready()
        url = f"https://127.0.0.1:{port}"
        trusted = tfwarden({}, "status", "--cacert", str(cert), url=url)
        assert trusted.returncode == 0 and trusted.stdout == "no managed models\n", trusted.stderr
        untrusted = tfwarden({}, "status", url=url)
        assert untrusted.returncode == 1
        assert "certificate verify failed" in one_error_line(untrusted)
    finally:
        daemon.terminate()
        daemon.close()
