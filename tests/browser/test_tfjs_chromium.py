"""A real browser reports to tfwarden: Debian's headless Chromium loads web/edge-probe (a TF.js
half_plus_two model, y = 0.5 * x + 2, a dense layer with fixed weights, no model download) from
one origin, runs N inferences and exports their durations with the OpenTelemetry JS SDK's
OTLP/HTTP exporter (@opentelemetry/exporter-metrics-otlp-http 0.301.0, sdk-metrics 3.1.0) to a
daemon on ANOTHER origin, with a bearer token: a cross-origin fetch with a CORS preflight.

Headless Chromium has no GPU, so the page runs on TF.js 4.22.0's ``cpu`` backend and, as a second
case, its ``wasm`` backend (the SIMD .wasm file, served by the page's own server next to the
bundle; no threads: the page is not cross-origin isolated). Each is checked against
GET /api/v1/edge/{model}: one device, N inferences, the cohort ``ml.delegate=<the backend the page
reported>``; the page's outputs are 0.5 * x + 2; the browser fetched nothing but the page's origin
and the daemon. A page whose origin is not in ``edge.cors_origins`` gets nothing in (the
preflight is refused, its version's count stays 0).

Screenshots of the finished pages: build/browser/tfjs-edge.png (cpu), tfjs-edge-wasm.png,
tfjs-edge-refused.png. The bundle is built with npm ci + esbuild when web/edge-probe/dist is
missing or older than its sources (scripts/test builds it beforehand); skipped without
/usr/bin/chromium, or without npm when nothing is built."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.helpers import REPO, DaemonProcess, daemon_config, free_port

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
PROBE = REPO / "web" / "edge-probe"
DIST = PROBE / "dist"
SCREENSHOTS = REPO / "build" / "browser"
TOKEN = "browser-ingest-secret"
MODEL = "half_plus_two"
N = 25
PAGE_TIMEOUT_MS = 60_000

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)", allow_module_level=True)


def build_probe() -> None:
    """npm ci (when node_modules is missing) and the esbuild bundle (when stale)."""
    sources = [PROBE / "src" / "page.js", PROBE / "index.html", PROBE / "package-lock.json",
               PROBE / "package.json"]
    built = [DIST / "page.js", DIST / "index.html", DIST / "tfjs-backend-wasm-simd.wasm"]
    if all(path.exists() for path in built) and min(p.stat().st_mtime for p in built) >= max(
            p.stat().st_mtime for p in sources):
        return
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed and web/edge-probe/dist is not built")
    if not (PROBE / "node_modules" / ".package-lock.json").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=PROBE, check=True,
                       timeout=300)
    subprocess.run([npm, "run", "build"], cwd=PROBE, check=True, timeout=120)


class StaticServer:
    """web/edge-probe/dist over HTTP on 127.0.0.1 (a free port: its own origin), in a thread."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def pages() -> Iterator[tuple[StaticServer, StaticServer]]:
    """Two origins serving the page: the allowed one and one not in cors_origins."""
    build_probe()
    allowed, stranger = StaticServer(DIST), StaticServer(DIST)
    try:
        yield allowed, stranger
    finally:
        allowed.close()
        stranger.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory,
           pages: tuple[StaticServer, StaticServer]) -> Iterator[DaemonProcess]:
    work = tmp_path_factory.mktemp("browser")
    (work / "ingest").write_text(TOKEN + "\n")
    port = free_port()
    config = daemon_config(
        work, port, server={"listen": f"127.0.0.1:{port}", "ingest_token_file": "ingest"},
        edge={"models": [{"name": MODEL}], "cors_origins": [pages[0].origin]})
    process = DaemonProcess(config, port)
    try:
        process.wait_ready()
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, timeout=30_000,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        try:
            yield chromium
        finally:
            chromium.close()


def run_page(browser: Any, origin: str, daemon: DaemonProcess, version: str,
             screenshot: Path, backend: str = "cpu", timeout_ms: int = 5000) -> dict[str, Any]:
    """Load the page from ``origin`` and wait for its done marker; its summary, the methods
    of the requests it sent to the daemon (preflights included) and its console."""
    query = urlencode({"url": f"{daemon.base_url}/v1/metrics", "token": TOKEN, "n": N,
                       "backend": backend, "model": MODEL, "version": version,
                       "device": f"chromium-{uuid.uuid4()}", "timeout": timeout_ms})
    context = browser.new_context(viewport={"width": 900, "height": 900})
    try:
        page = context.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        sent: list[str] = []  # what the browser itself sent, preflights included (CDP)
        cdp = context.new_cdp_session(page)
        cdp.on("Network.requestWillBeSent", lambda event: sent.append(
            f"{event['request']['method']} {event['request']['url']}"))
        cdp.send("Network.enable")
        page.goto(f"{origin}/index.html?{query}", timeout=PAGE_TIMEOUT_MS)
        page.wait_for_selector("#done", state="visible", timeout=PAGE_TIMEOUT_MS)
        summary: dict[str, Any] = json.loads(page.inner_text("#summary"))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot: {screenshot}")
        return {**summary, "sent": sent, "console": console}
    finally:
        context.close()


def edge_stats(daemon: DaemonProcess) -> dict[str, Any]:
    answer = daemon.client.get(f"/api/v1/edge/{MODEL}")
    assert answer.status_code == 200, answer.text
    stats: dict[str, Any] = answer.json()
    return stats


VERSIONS = {"cpu": "1", "wasm": "3"}  # one model version per backend


@pytest.mark.parametrize("backend", ["cpu", "wasm"])
def test_tfjs_page_reports_across_origins(browser: Any, daemon: DaemonProcess,
                                          pages: tuple[StaticServer, StaticServer],
                                          backend: str) -> None:
    origin = pages[0].origin
    name = "tfjs-edge.png" if backend == "cpu" else f"tfjs-edge-{backend}.png"
    result = run_page(browser, origin, daemon, VERSIONS[backend], SCREENSHOTS / name, backend)
    assert "error" not in result, result
    assert result["exported"] == "success", result
    assert result["backend"] == backend and result["tfjs"] == "4.22.0"
    assert result["inferences"] == N
    assert result["inputs"] == [float(i - 1) for i in range(N)]
    assert result["outputs"] == [0.5 * x + 2 for x in result["inputs"]] and result["correct"]
    metrics = f"{daemon.base_url}/v1/metrics"
    assert f"OPTIONS {metrics}" in result["sent"] and f"POST {metrics}" in result["sent"], result
    assert all(line.split()[1].startswith((f"{origin}/", metrics)) for line in result["sent"])
    if backend == "wasm":
        assert result["wasm"] == {"simd": True, "threads": False}
        assert f"GET {origin}/tfjs-backend-wasm-simd.wasm" in result["sent"]

    cohorts = edge_stats(daemon)["versions"][VERSIONS[backend]]
    (name, cohort), = cohorts.items()
    assert name == (f"ml.delegate={result['backend']} | "
                    f"device.model.identifier={result['deviceModel']}")
    assert (cohort["devices"], cohort["inferences"], cohort["failed_inferences"]) == (1, N, 0)
    assert cohort["inference_p50_ms"] is not None


def test_origin_not_in_cors_origins_gets_nothing_in(browser: Any, daemon: DaemonProcess,
                                                    pages: tuple[StaticServer, StaticServer]
                                                    ) -> None:
    result = run_page(browser, pages[1].origin, daemon, "2",
                      SCREENSHOTS / "tfjs-edge-refused.png", timeout_ms=2000)
    assert result["outputs"] == [0.5 * x + 2 for x in result["inputs"]]  # the model ran
    assert result["exported"].startswith("failed"), result
    metrics = f"{daemon.base_url}/v1/metrics"
    assert f"OPTIONS {metrics}" in result["sent"]
    assert any("CORS policy" in line for line in result["console"]), result["console"]
    assert "2" not in edge_stats(daemon)["versions"]  # no data point of version 2 got in
