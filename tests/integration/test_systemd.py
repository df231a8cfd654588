"""sd_notify from a real daemon process, and the shipped systemd unit."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import REPO, DaemonProcess

pytestmark = pytest.mark.integration
UNIT = REPO / "systemd" / "tfwarden.service"
REPLICAS_DROP_IN = REPO / "systemd" / "tfwarden.service.d" / "replicas.conf"


def test_ready_watchdog_and_stopping_notifications(
    daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    daemon = daemon_factory(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    messages: list[str] = []

    def receive_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
        """Collect notifications until ``condition`` holds (bounded: a guard against a hang)."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, messages
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                pass

    try:
        daemon.wait_ready()
        receive_until(lambda: messages.count("WATCHDOG=1") >= 4)  # it keeps pinging
        ready = [m for m in messages if "READY=1" in m.splitlines()]
        assert len(ready) == 1 and "STATUS=Watching 0 model(s)" in ready[0]
        assert f"MAINPID={daemon.proc.pid}" in ready[0]
        assert messages.index(ready[0]) == 0
        code, _ = daemon.terminate(timeout=30)
        receive_until(lambda: any("STOPPING=1" in m.splitlines() for m in messages))
        assert code == 0
    finally:
        sock.close()


def test_watchdog_pings_stop_when_the_process_is_frozen(
    daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    import signal

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    daemon = daemon_factory(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    try:
        daemon.wait_ready()
        daemon.proc.send_signal(signal.SIGSTOP)
        time.sleep(0.3)
        while True:  # drop what was queued before the freeze
            try:
                sock.recv(4096)
            except TimeoutError:
                break
        with pytest.raises(TimeoutError):
            sock.settimeout(1.0)
            sock.recv(4096)
        daemon.proc.send_signal(signal.SIGCONT)
        sock.settimeout(30.0)  # a guard against a hang only: pinging resumes
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def _fake_root(tmp_path: Path) -> Path:
    """A root with systemd's unit directory, the unit and stub executables it names."""
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system" / UNIT.name)
    for exe in ("usr/bin/tfwarden", "bin/kill"):
        target = root / exe
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#!/bin/sh\nexit 0\n")
        target.chmod(0o755)
    return root


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is not installed (apt-get install systemd); .ci/run installs it")
    return path


def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    result = subprocess.run(
        [_systemd_analyze(), "verify", f"--root={_fake_root(tmp_path)}", UNIT.name],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_unit_with_the_replicas_drop_in_verifies_and_stays_at_most_2(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    drop_in = root / "etc/systemd/system/tfwarden.service.d"
    drop_in.mkdir()
    shutil.copy(REPLICAS_DROP_IN, drop_in)
    (root / "etc/tfwarden").mkdir(parents=True)
    (root / "etc/tfwarden/pg.dsn").write_text("host=db.internal dbname=tfwarden user=tfwarden\n")
    verify = subprocess.run([_systemd_analyze(), "verify", f"--root={root}", UNIT.name],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    shown = subprocess.run([_systemd_analyze(), "cat-config", f"--root={root}",
                            f"systemd/system/{UNIT.name}"], capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0 and "LoadCredential=pg.dsn:/etc/tfwarden/pg.dsn" in shown.stdout
    security = subprocess.run([_systemd_analyze(), "security", "--offline=true", f"--root={root}",
                               "--threshold=20", UNIT.name], capture_output=True, text=True,
                              timeout=60)
    score = [ln for ln in security.stdout.splitlines() if "Overall exposure level" in ln]
    assert security.returncode == 0 and float(score[0].split(":")[1].split()[0]) <= 2.0


def test_unit_security_exposure_is_at_most_2(tmp_path: Path) -> None:
    root = _fake_root(tmp_path)
    cmd = [_systemd_analyze(), "security", "--offline=true", f"--root={root}"]
    result = subprocess.run([*cmd, "--threshold=20", UNIT.name],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:]
    score_line = [ln for ln in result.stdout.splitlines() if "Overall exposure level" in ln]
    score = float(score_line[0].split(":")[1].split()[0])
    assert score <= 2.0


def test_unit_declares_what_the_daemon_relies_on() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=/bin/kill -HUP",
                 "StateDirectory=tfwarden", "ConfigurationDirectory=tfwarden", "DynamicUser=yes"):
        assert line in text
    assert "PrivateNetwork=yes" not in text  # it must reach TF Serving over the network
