"""Input-drift windowing, shared by the daemon's drift checks and ``tfwarden backtest``.

Without a reference file, the first ``reference_rows`` rows for the stable version (or without
a version) become the reference; rows for other versions seen meanwhile are not kept. After
that, rows gather into disjoint windows of ``window_rows``; each window is checked against the
reference (by the caller: the drift worker live, an engine in a backtest), and the verdict
follows :func:`tfwarden.detectors.driftverdict.input_drift_finding`: ``regression`` after
``consecutive`` drifted windows in a row (repeated tests on a fixed reference would otherwise
alarm too often), ``ok`` after a clean window.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tfwarden.core.ports import Row
from tfwarden.core.types import Finding
from tfwarden.detectors.driftverdict import input_drift_finding


@dataclass(frozen=True)
class Added:
    """What ``InputWindows.add`` did: whether the rows completed the reference, the rows that
    go to the checks, and how many pending rows were dropped over the bound."""

    completed_reference: bool
    rows: list[Row]
    dropped: int
    versions: list[int | None]  # the version each of ``rows`` was captured for


class InputWindows:
    def __init__(self, window_rows: int, consecutive: int, reference_rows: int, *,
                 collect_reference: bool, collected: Sequence[Row] = (),
                 max_pending_windows: int | None = None) -> None:
        self.window_rows, self.need, self.reference_rows = window_rows, consecutive, reference_rows
        self.collect_reference = collect_reference
        self.collected: list[Row] = list(collected)
        self.max_pending = None if max_pending_windows is None else \
            max_pending_windows * window_rows
        self.pending: list[Row] = []
        self.pending_versions: list[int | None] = []
        self.window_version: int | None = None  # the version the last taken window names
        self.windows = 0  # windows checked
        self.consecutive = 0  # drifted windows in a row

    @property
    def collecting(self) -> bool:
        """Still collecting the reference from the first rows."""
        return self.collect_reference and len(self.collected) < self.reference_rows

    def add(self, rows: Iterable[tuple[int | None, Row]], stable: int | None) -> Added:
        """Take rows (with the version each was captured for)."""
        was_collecting = self.collecting
        checked: list[Row] = []
        versions: list[int | None] = []
        for version, row in rows:
            if self.collecting:
                if version in (None, stable):
                    self.collected.append(row)
            else:
                checked.append(row)
                versions.append(version)
        self.pending += checked
        self.pending_versions += versions
        dropped = 0
        if self.max_pending is not None and len(self.pending) > self.max_pending:
            dropped = len(self.pending) - self.max_pending
            del self.pending[:dropped]
            del self.pending_versions[:dropped]
        return Added(was_collecting and not self.collecting, checked, dropped, versions)

    def take(self) -> list[Row] | None:
        """The next full window, or None."""
        if len(self.pending) < self.window_rows:
            return None
        window = self.pending[:self.window_rows]
        named = Counter(v for v in self.pending_versions[:self.window_rows] if v is not None)
        self.window_version = named.most_common(1)[0][0] if named else None
        del self.pending[:self.window_rows]
        del self.pending_versions[:self.window_rows]
        return window

    def record(self, model: str, report: dict[str, Any], now: float) -> Finding:
        """The finding after one window's report (``drift``, ``drifted_features``...)."""
        self.windows += 1
        self.consecutive = self.consecutive + 1 if report["drift"] else 0
        return input_drift_finding(model, report, self.consecutive, self.need, self.windows, now,
                                   self.window_version)
