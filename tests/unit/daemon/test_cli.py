from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tfwarden.daemon.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tfwarden.daemon", *args],
                          capture_output=True, text=True, timeout=60)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("tfwarden ")


@pytest.mark.parametrize("argv", [["frobnicate"], ["run"], ["run", "--config"],
                                  ["check-config"], ["--bogus"], []])
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("tfwarden")


def test_config_schema_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "tfwarden configuration"


def test_run_with_invalid_config_is_one_line_exit_1(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.yaml"
    bad.write_text("state_dir: /tmp/x\nbogus: 1\n")
    result = run_cli("run", "--config", str(bad))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "bogus (line 2): unknown field" in lines[0]
    assert "Traceback" not in result.stderr


def test_runbook_prints_an_installed_page_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runbook"]) == 0
    names = capsys.readouterr().out.split()
    assert "TfwardenDown" in names and "TfwardenDecision" in names and "README" not in names
    assert main(["runbook", "TfwardenDown"]) == 0
    page = capsys.readouterr().out
    assert page.startswith("# TfwardenDown") and "## What to check" in page
    assert main(["runbook", "../../etc/passwd"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no runbook for" in err
