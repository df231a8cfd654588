"""Input drift in ``tfwarden backtest``: ``inputs`` trace lines through the same engines.

Per model the reference is the configured file, else the first ``reference_rows`` rows of the
trace; then every ``window_rows`` rows are one check, and the finding follows the daemon's rule
(``detectors.driftverdict``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tfwarden.core.errors import ReferenceError, TraceError
from tfwarden.core.types import Finding
from tfwarden.detectors.drift.engines import BatchSettings, DriftEngine, make_engine
from tfwarden.detectors.drift.reference import LoggedRows, Reference, load_reference_file
from tfwarden.detectors.driftverdict import input_drift_finding
from tfwarden.detectors.trace import TraceEvent


@dataclass(frozen=True)
class ReplaySettings:
    engine: str = "alibi"
    reference: Path | None = None
    reference_rows: int = 2000
    kinds: dict[str, str] | None = None
    window_rows: int = 500
    consecutive: int = 2
    batch: BatchSettings = BatchSettings()


@dataclass
class _Model:
    features: tuple[str, ...]
    collected: list[list[float | str]] = field(default_factory=list)
    engine: DriftEngine | None = None
    reference: Reference | None = None
    pending: list[list[float | str]] = field(default_factory=list)
    consecutive: int = 0
    windows: int = 0


class InputDriftReplay:
    def __init__(self, settings: Callable[[str], ReplaySettings],
                 read_logged: LoggedRows | None = None) -> None:
        self.settings, self.read_logged = settings, read_logged
        self.models: dict[str, _Model] = {}
        self.current: dict[str, Finding] = {}

    def feed(self, event: TraceEvent) -> Iterator[Finding]:
        s = self.settings(event.model)
        model = self.models.get(event.model)
        if model is None:
            model = self.models[event.model] = _Model(event.features)
            if s.reference is not None:
                try:
                    reference = load_reference_file(s.reference, event.features,
                                                    self._kinds(s, event.features),
                                                    s.reference_rows, self.read_logged)
                except ReferenceError as exc:
                    raise TraceError(f"line {event.line}: reference of {event.model}: "
                                     f"{exc}") from None
                self._start(model, s, reference)
        if event.features != model.features:
            raise TraceError(f"line {event.line}: features {list(event.features)} differ from "
                             f"the model's earlier {list(model.features)}")
        rows = [list(r) for r in event.rows]
        if model.engine is None:
            need = s.reference_rows - len(model.collected)
            model.collected += rows[:need]
            rows = rows[need:]
            if len(model.collected) < s.reference_rows:
                return
            try:
                reference = Reference.from_rows(model.collected, event.features,
                                                self._kinds(s, event.features),
                                                source=f"first {s.reference_rows} trace rows")
            except ReferenceError as exc:
                raise TraceError(f"line {event.line}: {exc}") from None
            self._start(model, s, reference)
        assert model.engine is not None and model.reference is not None
        model.pending += rows
        while len(model.pending) >= s.window_rows:
            window, model.pending = model.pending[:s.window_rows], model.pending[s.window_rows:]
            try:
                batch = model.reference.encode(window)
            except ReferenceError as exc:
                raise TraceError(f"line {event.line}: {exc}") from None
            report = model.engine.check(batch)
            model.windows += 1
            model.consecutive = model.consecutive + 1 if report["drift"] else 0
            finding = input_drift_finding(event.model, report, model.consecutive, s.consecutive,
                                          model.windows, event.t)
            previous = self.current.get(event.model)
            self.current[event.model] = finding
            if previous is None or previous.verdict != finding.verdict:
                yield finding

    @staticmethod
    def _kinds(s: ReplaySettings, features: tuple[str, ...]) -> list[str] | None:
        if s.kinds is None:
            return None
        return [s.kinds.get(f, "numeric") for f in features]

    @staticmethod
    def _start(model: _Model, s: ReplaySettings, reference: Reference) -> None:
        model.reference = reference
        model.engine = make_engine(s.engine, reference, s.batch)
        model.collected = []
