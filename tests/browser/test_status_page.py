"""The status page in a real browser during a live canary: Debian's headless Chromium, driven
by Python playwright, against a daemon managing a model on a devserver.

The page is opened once while version 1 is stable and never reloaded by the test: its own
refresh must show version 2 staged as a canary, then the timeline gaining the rollback with the
decision's evidence, the phase ``rolled_back``, version 2 rejected, and both versions in the
latency chart. The same page at a phone's width must not scroll sideways; without JavaScript
the text is all there and a meta refresh reloads it. The browser asks nothing of any origin but
the daemon's.

Screenshots (test artefacts): build/browser/status-canary.png, status-rollback.png,
status-rollback-phone.png, status-nojs.png. Skipped without /usr/bin/chromium."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_canary_lifecycle import FAST_RULES, MODEL, lifecycle_config, new_version
from tests.helpers import REPO, DaemonProcess, DevServer, free_port

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "build" / "browser"

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("statuspage")
    base = work / "models" / "m"
    shutil.copytree(MODEL, base / "1")
    (work / "models.config").write_text(
        f'model_config_list {{ config {{ name: "m" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
    (work / "golden.jsonl").write_text(json.dumps(
        {"request": {"instances": [2.0]}, "expected": {"predictions": [3.0]}}) + "\n")
    (work / "rules.yaml").write_text(FAST_RULES)
    dev = DevServer(f"--model_config_file={work / 'models.config'}", workdir=work)
    dev.wait_ready()
    port = free_port()
    daemon = DaemonProcess(lifecycle_config(work, dev, port), port)
    daemon.wait_ready()
    yield {"daemon": daemon, "base": base}
    daemon.terminate()
    daemon.close()
    dev.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


def test_the_page_follows_a_canary_to_its_rollback(stack: dict[str, Any], browser: Any) -> None:
    daemon, base = stack["daemon"], stack["base"]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    origins: set[str] = set()
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("request", lambda request: origins.add("/".join(request.url.split("/")[:3])))
    page.goto(f"{daemon.base_url}/?refresh=1")
    model = page.locator('section[data-model="m"]')
    page.wait_for_selector('section[data-model="m"] [data-role="stable"]:text-is("v1")',
                           timeout=30_000)  # adopted (the page refreshes itself)
    assert model.get_attribute("data-phase") == "stable"

    new_version(base, 2, {"latency": {"fixed_ms": 40}})
    page.wait_for_selector('section[data-model="m"][data-phase="canary_live"]', timeout=30_000)
    assert model.locator('[data-role="canary"]').inner_text() == "v2"
    assert model.locator('li[data-kind="action_done"][data-action="stage_canary"]').count() == 1
    page.screenshot(path=str(SCREENSHOTS / "status-canary.png"), full_page=True)

    page.wait_for_selector('section[data-model="m"] li[data-kind="action_done"]'
                           '[data-action="rollback"]', timeout=60_000)
    page.wait_for_selector('section[data-model="m"][data-phase="rolled_back"]', timeout=10_000)
    decision = model.locator('li[data-kind="decision"][data-action="rollback"]').first
    assert "roll back v2 → v1" in decision.inner_text()
    evidence = decision.locator('tr[data-detector="latency"][data-verdict="regression"]')
    assert evidence.count() == 1 and "log_e_value" in evidence.inner_text()
    kinds = model.locator("ol.timeline > li").evaluate_all("els => els.map(e => e.dataset.kind)")
    assert kinds.index("decision") < kinds.index("new_version")  # latest first
    assert model.locator('[data-role="stable"]').inner_text() == "v1"
    assert "v2" in model.inner_text() and "rejected" in model.inner_text()
    for version in (1, 2):  # both versions' probe latency is drawn
        assert model.locator(f'svg.chart [data-version="{version}"]').count() >= 1
    page.screenshot(path=str(SCREENSHOTS / "status-rollback.png"), full_page=True)

    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True,
                             device_scale_factor=2)
    phone.goto(f"{daemon.base_url}/?model=m")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    assert phone.locator('section[data-model="m"]').get_attribute("data-phase") == "rolled_back"
    phone.screenshot(path=str(SCREENSHOTS / "status-rollback-phone.png"), full_page=True)
    phone.close()
    page.close()
    assert origins == {daemon.base_url}


def test_the_text_needs_no_javascript(stack: dict[str, Any], browser: Any) -> None:
    daemon = stack["daemon"]
    deadline = time.monotonic() + 30
    while daemon.client.get("/api/v1/models/m").json().get("stable_version") is None:
        assert time.monotonic() < deadline, "model m not adopted"
        time.sleep(0.25)
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1000, "height": 800})
    page = context.new_page()
    page.goto(f"{daemon.base_url}/")
    text = page.locator("main").inner_text()
    assert "Timeline (latest first)" in text and "Health" in text and "Jobs" in text
    assert page.locator('section[data-model="m"] ol.timeline > li[data-kind]').count() >= 1
    # without JavaScript the page reloads itself: the meta refresh of the <noscript> is live
    refresh = page.locator('noscript meta[http-equiv="refresh"]')
    assert refresh.count() == 1 and refresh.get_attribute("content") == "5"
    first = page.locator("#page").get_attribute("data-generated")
    page.wait_for_function(f'document.getElementById("page").dataset.generated !== "{first}"',
                           timeout=15_000)  # reloaded by the browser, not by any script
    assert page.locator('section[data-model="m"] [data-role="stable"]').inner_text().startswith("v")
    page.screenshot(path=str(SCREENSHOTS / "status-nojs.png"), full_page=True)
    context.close()
