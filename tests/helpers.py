"""Helpers shared by tests: free ports, config files, a real `tfwarden run` subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

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


def daemon_config(work: Path, port: int, dev: DevServer | None = None, *,
                  models: Sequence[Mapping[str, Any]] = (), model_config_file: str | None = None,
                  serving: Mapping[str, Any] | None = None, name: str = "tfwarden.yaml",
                  **sections: Any) -> Path:
    """Write the configuration of a test daemon into ``work`` and return its path: the daemon
    on 127.0.0.1:``port`` with its state in ``work/state``; ``dev`` as serving endpoint ``dev``
    (gRPC, REST when it serves it, status every 0.5 s, the ``model_config_file`` tfwarden
    manages if given; ``serving`` overrides); ``models`` on it; other top-level ``sections``."""
    data: dict[str, Any] = {"server": {"listen": f"127.0.0.1:{port}"}, "state_dir": "./state"}
    if dev is not None:
        endpoint: dict[str, Any] = {"kind": "tfserving", "grpc_address": dev.grpc_address,
                                    "status_interval_seconds": 0.5}
        if dev.rest_port:
            endpoint["rest_url"] = dev.rest_url
        if model_config_file is not None:
            endpoint["model_config_file"] = model_config_file
        data["serving"] = {"dev": {**endpoint, **(serving or {})}}
    if models:
        data["models"] = [{"serving": "dev", **model} for model in models]
    data.update(sections)
    path = work / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class DaemonProcess:
    """`tfwarden run --config FILE` as a child process, stderr captured to a file."""

    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = config.parent / "daemon.stderr"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        full_env = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tfwarden.daemon", "run", "--config", str(config)],
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


class DevServer:
    """`tfwarden devserver` as a child process on free loopback ports."""

    def __init__(self, *flags: str, workdir: Path, rest: bool = True, grpc: bool = True) -> None:
        self.grpc_port = free_port() if grpc else 0
        self.rest_port = free_port() if rest else 0
        self.rest_url = f"http://127.0.0.1:{self.rest_port}"
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        self.log_path = workdir / f"devserver-{self.rest_port or self.grpc_port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tfwarden.daemon", "devserver", f"--port={self.grpc_port}",
             f"--rest_api_port={self.rest_port}", *flags],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir)

    def wait_ready(self, timeout: float = 90.0) -> None:
        marker = "Exporting HTTP/REST API" if self.rest_port else "Running gRPC ModelServer"
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"devserver exited {self.proc.returncode}: {self.output()}")
            if marker in self.output():
                return
            time.sleep(0.1)
        raise AssertionError(f"devserver not ready after {timeout}s: {self.output()}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Nginx:
    """Debian's nginx on a free loopback port, all its files under ``work``; it includes the
    files tfwarden's nginx router writes to ``include`` (``*.http.conf``, ``*.server.conf``)."""

    def __init__(self, work: Path, include_name: str = "tfwarden-nginx") -> None:
        import shutil

        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(self.binary).exists():
            raise AssertionError("nginx is not installed; scripts/test installs it")
        self.work = work
        self.include = work / include_name
        self.include.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = work / "nginx.conf"
        self.conf.write_text(f"""worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {self.include}/*.http.conf;
    server {{
        listen 127.0.0.1:{self.port};
        include {self.include}/*.server.conf;
    }}
}}
""")
        subprocess.run([self.binary, "-c", str(self.conf), "-p", str(work)], check=True,
                       timeout=30)

    def stop(self) -> None:
        subprocess.run([self.binary, "-c", str(self.conf), "-p", str(self.work), "-s", "stop"],
                       timeout=30)
