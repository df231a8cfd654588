"""The shipped Prometheus rules and Alertmanager example pass Prometheus' own tools."""

from __future__ import annotations

import shutil
import subprocess

import pytest

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
