"""Logging to stderr, one event per line; journald-friendly when JOURNAL_STREAM is set."""

from __future__ import annotations

import logging
import os
import sys
import time

# syslog priorities understood by journald's "<N>" line prefix (SyslogLevelPrefix=yes).
_PRIORITY = {
    logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2,
}


class OneLineFormatter(logging.Formatter):
    """``<time> LEVEL logger: message`` with newlines escaped; under journald ``<prio>logger: msg``."""

    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += " | " + self.formatException(record.exc_info)
        message = message.replace("\\", "\\\\").replace("\n", "\\n")
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{record.name}: {message}"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name}: {message}"


def stderr_is_journal() -> bool:
    """True when stderr is the journal stream systemd named in JOURNAL_STREAM (device:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def configure_logging(level: str = "info") -> None:
    """Send every log record to stderr, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(journald=stderr_is_journal()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)
    for noisy in ("uvicorn", "uvicorn.error", "apscheduler", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A run skipped because the previous one is still going is the intended max_instances=1
    # behaviour (slow drift checks, probes past their interval), not something to warn about.
    logging.getLogger("apscheduler.scheduler").addFilter(
        lambda record: "maximum number of running instances" not in record.getMessage())


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
