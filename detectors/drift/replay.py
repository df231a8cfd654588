"""Input drift in ``tfwarden backtest``: ``inputs`` trace lines through the same engines.

Per model the reference is the configured file, else the first ``reference_rows`` rows of the
trace; then every ``window_rows`` rows are one check, and the finding follows the daemon's rule
(the same ``InputWindows``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tfwarden.core.errors import ReferenceError, TraceError
from tfwarden.core.types import Finding
from tfwarden.detectors.drift.engines import DriftEngine, make_engine
from tfwarden.detectors.drift.reference import LoggedRows, Reference, load_reference_file
from tfwarden.detectors.drift.settings import DriftSettings
from tfwarden.detectors.drift.windows import InputWindows
from tfwarden.detectors.trace import TraceEvent


@dataclass
class _Model:
    features: tuple[str, ...]
    windows: InputWindows
    engine: DriftEngine | None = None
    reference: Reference | None = None


class InputDriftReplay:
    def __init__(self, settings: Callable[[str], DriftSettings],
                 read_logged: LoggedRows | None = None) -> None:
        self.settings, self.read_logged = settings, read_logged
        self.models: dict[str, _Model] = {}
        self.current: dict[str, Finding] = {}

    def feed(self, event: TraceEvent) -> Iterator[Finding]:
        s = self.settings(event.model)
        model = self.models.get(event.model) or self._start(event, s)
        if event.features != model.features:
            raise TraceError(f"line {event.line}: features {list(event.features)} differ from "
                             f"the model's earlier {list(model.features)}")
        if model.windows.add(((None, list(r)) for r in event.rows), None).completed_reference:
            try:
                reference = Reference.from_rows(model.windows.collected, event.features,
                                                s.kinds(event.features),
                                                source=f"first {s.reference_rows} trace rows")
            except ReferenceError as exc:
                raise TraceError(f"line {event.line}: {exc}") from None
            self._use(model, s, reference)
        if model.engine is None or model.reference is None:
            return
        while (window := model.windows.take()) is not None:
            try:
                batch = model.reference.encode(window)
            except ReferenceError as exc:
                raise TraceError(f"line {event.line}: {exc}") from None
            finding = model.windows.record(event.model, model.engine.check(batch), event.t)
            previous = self.current.get(event.model)
            self.current[event.model] = finding
            if previous is None or previous.verdict != finding.verdict:
                yield finding

    def _start(self, event: TraceEvent, s: DriftSettings) -> _Model:
        model = self.models[event.model] = _Model(event.features, InputWindows(
            s.window_rows, s.consecutive, s.reference_rows, collect_reference=s.reference is None))
        if s.reference is not None:
            try:
                reference = load_reference_file(s.reference, event.features,
                                                s.kinds(event.features), s.reference_rows,
                                                self.read_logged)
            except ReferenceError as exc:
                raise TraceError(f"line {event.line}: reference of {event.model}: "
                                 f"{exc}") from None
            self._use(model, s, reference)
        return model

    @staticmethod
    def _use(model: _Model, s: DriftSettings, reference: Reference) -> None:
        model.reference = reference
        model.engine = make_engine(s.engine, reference, s.batch)
