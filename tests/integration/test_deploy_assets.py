"""The shipped Prometheus rules and Alertmanager example pass Prometheus' own tools, and every
alert has its runbook page (docs/runbooks) and links it."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.helpers import REPO

pytestmark = pytest.mark.integration


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; scripts/test installs prometheus and "
                    "prometheus-alertmanager")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60,
                          cwd=REPO / "deploy" / "prometheus")


def test_rules_are_valid() -> None:
    result = run(tool("promtool"), "check", "rules", "tfwarden-rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules", "tfwarden-rules.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_example_is_valid() -> None:
    result = run(tool("amtool"), "check-config", str(REPO / "deploy" / "alertmanager" /
                                                     "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


RULES = REPO / "deploy" / "prometheus" / "tfwarden-rules.yml"
RUNBOOKS = REPO / "docs" / "runbooks"
RUNBOOK_SECTIONS = ("What it means", "What tfwarden already did", "What to check")


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_every_alert_links_its_own_runbook_page() -> None:
    found = alerts()
    assert found
    for rule in found:
        name = rule["alert"]
        url = rule.get("annotations", {}).get("runbook_url", "")
        assert url.endswith(f"/runbooks/{name}"), f"{name}: runbook_url {url!r}"
        page = RUNBOOKS / f"{name}.md"
        assert page.is_file(), f"{name}: no {page.relative_to(REPO)}"
        headings = {line.lstrip("#").strip() for line in page.read_text().splitlines()
                    if line.startswith("## ")}
        missing = [s for s in RUNBOOK_SECTIONS if s not in headings]
        assert not missing, f"{page.relative_to(REPO)} lacks the sections {missing}"


SENT_BY_TFWARDEN = {"TfwardenDecision", "TfwardenActionFailed"}  # lifecycle/alerts.py


def test_every_runbook_page_belongs_to_an_alert() -> None:
    names = {rule["alert"] for rule in alerts()} | SENT_BY_TFWARDEN
    pages = {p.stem for p in RUNBOOKS.glob("*.md") if p.name != "README.md"}
    assert pages - names == set(), "runbook pages without an alert"
    assert SENT_BY_TFWARDEN <= pages, "alerts tfwarden sends itself without a page"
    index = (RUNBOOKS / "README.md").read_text()
    assert [n for n in sorted(names) if f"({n}.md)" not in index] == [], "alerts not indexed"
