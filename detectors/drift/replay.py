"""Input drift in ``tfwarden backtest``: ``inputs`` trace lines through the same engines.

Per model the reference is the configured file, else the first ``reference_rows`` rows of the
trace; then, as in the daemon, every row goes through the sequential engine (``method:
sequential``, the default; findings carry the rows' version) or every ``window_rows`` rows are
one check with the daemon's rule (the same ``InputWindows``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from tfwarden.core.errors import ReferenceError, TraceError
from tfwarden.core.types import Finding
from tfwarden.detectors.drift.engines import DriftEngine, make_engine
from tfwarden.detectors.drift.reference import LoggedRows, Reference, load_reference_file
from tfwarden.detectors.drift.sequential import SequentialDrift
from tfwarden.detectors.drift.settings import DriftSettings
from tfwarden.detectors.drift.windows import InputWindows
from tfwarden.detectors.driftverdict import sequential_drift_finding
from tfwarden.detectors.trace import TraceEvent


@dataclass
class _Model:
    features: tuple[str, ...]
    windows: InputWindows
    engine: DriftEngine | None = None
    reference: Reference | None = None
    sequential: SequentialDrift | None = None


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
        # every row of the trace may be reference (the replay has no stable version)
        added = model.windows.add(((event.version, list(r)) for r in event.rows), event.version)
        if added.completed_reference:
            try:
                reference = Reference.from_rows(model.windows.collected, event.features,
                                                s.kinds(event.features),
                                                source=f"first {s.reference_rows} trace rows")
            except ReferenceError as exc:
                raise TraceError(f"line {event.line}: {exc}") from None
            self._use(model, s, reference)
        if model.reference is None:
            return
        if model.sequential is not None:
            while model.windows.take() is not None:
                pass  # rows go to the sequential engine, not to windows
            if added.rows:
                yield from self._changed(event.model, sequential_drift_finding(
                    event.model, model.sequential.observe(
                        self._encode(model.reference, added.rows, event.line), added.versions),
                    event.t))
            return
        assert model.engine is not None
        while (window := model.windows.take()) is not None:
            batch = self._encode(model.reference, window, event.line)
            yield from self._changed(event.model, model.windows.record(
                event.model, model.engine.check(batch), event.t))

    def _changed(self, model: str, finding: Finding) -> Iterator[Finding]:
        previous = self.current.get(model)
        self.current[model] = finding
        if previous is None or previous.verdict != finding.verdict:
            yield finding

    @staticmethod
    def _encode(reference: Reference, rows: list[list[float | str]], line: int) -> Any:
        try:
            return reference.encode(rows)
        except ReferenceError as exc:
            raise TraceError(f"line {line}: {exc}") from None

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
        if s.method == "sequential":  # no batch engine: alibi-detect would import TensorFlow
            model.sequential = SequentialDrift(reference, s.sequential)
        else:
            model.engine = make_engine(s.engine, reference, s.batch)
