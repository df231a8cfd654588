"""Helpers shared by tests: free ports, config files, a real `tfwarden run` subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
TESTDATA = REPO / "tests" / "testdata"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(directory: Path, text: str, name: str = "tfwarden.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def minimal_config(directory: Path, port: int, extra: str = "") -> Path:
    return write_config(directory, f"server:\n  listen: 127.0.0.1:{port}\n"
                                   f"state_dir: {directory / 'state'}\n{extra}")


class DaemonProcess:
    """`tfwarden run --config FILE` as a child process, stderr captured to a file."""

    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = config.parent / "daemon.stderr"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=self._log, env=full_env, cwd=config.parent,
        )
        self.client = httpx.Client(base_url=self.base_url, timeout=5.0)

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Wait for /-/ready to answer 200; return seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.stderr()}")
            try:
                if self.client.get("/-/ready").status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"daemon not ready after {timeout}s: {self.stderr()}")

    def stderr(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; return (exit status, seconds to exit)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - start

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
