from __future__ import annotations

import logging
import os
import sys

import pytest

from tfwarden.daemon.logs import OneLineFormatter, stderr_is_journal


def record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("tfwarden.daemon", level, __file__, 1, message, (), None)


def test_plain_format_has_utc_time_and_one_line() -> None:
    line = OneLineFormatter(journald=False).format(record("reload failed:\nline two"))
    assert line.endswith("INFO tfwarden.daemon: reload failed:\\nline two")
    assert "\n" not in line
    assert line[:4].isdigit() and "Z " in line


def test_journald_format_has_priority_and_no_timestamp() -> None:
    line = OneLineFormatter(journald=True).format(record("disk full", logging.ERROR))
    assert line == "<3>tfwarden.daemon: disk full"


def test_exceptions_stay_on_one_line() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = OneLineFormatter(journald=False).format(rec)
    assert "\n" not in line and "ValueError: bad" in line


def test_journal_stream_must_match_stderr(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = open(tmp_path / "err", "w")  # noqa: SIM115
    monkeypatch.setattr(sys, "stderr", target)
    st = os.fstat(target.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert stderr_is_journal()
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not stderr_is_journal()
    target.close()
