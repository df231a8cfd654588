"""Input capture: live model inputs posted to tfwarden, validated, kept in bounded reservoirs.

Open-source TF Serving cannot log requests, so inputs arrive as copies: TF Serving REST predict
bodies mirrored by nginx/Envoy/Istio (``POST /api/v1/capture/{model}``), or batches of feature
rows from clients and edge devices (``POST /api/v1/samples/{model}``). Both are checked against
the model's live signature (the serving client's GetModelMetadata, cached). Each client (by
address) has a token bucket of ``client_rows_per_second`` rows; bodies above ``max_body_bytes``
are refused. Accepted rows go to a per (model, version) reservoir (Algorithm R, seeded), so
memory stays bounded however much traffic is mirrored; the version is the ``version`` query
parameter of a capture call (mirrors usually cannot say) or the ``version`` of a samples batch.
Models with drift checks also keep their newest rows, in arrival order, for those checks.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from tfwarden.core.errors import CaptureError, CaptureRejected, ServingError
from tfwarden.core.ports import CaptureMetrics, Row
from tfwarden.core.ratelimit import RateBuckets
from tfwarden.core.settings import Settings
from tfwarden.serving.tfserving.client import ServingClient
from tfwarden.serving.tfserving.rows import InputSpec, rows_from_predict_body, rows_from_samples

INLINE_PARSE_BYTES = 64 * 1024  # smaller bodies parse faster than a thread hand-off


class CaptureSettings(Settings):
    """Input capture (POST /api/v1/capture/{model}, /api/v1/samples/{model})."""

    reservoir_rows: int = Field(5000, ge=10, le=1_000_000, description="Rows kept per version.")
    recent_rows: int = Field(20_000, ge=100, le=1_000_000,
                             description="Newest rows per model kept for drift checks.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    client_rows_per_second: int = Field(50_000, ge=1, description="Per client; more gets 429.")
    signature_ttl_seconds: float = Field(60.0, gt=0)


@dataclass(frozen=True)
class CapturedModel:
    """A model whose inputs may be captured: where its signature comes from, and whether its
    drift checks want the newest rows."""

    client: ServingClient | None
    drift: bool = False


@dataclass
class Reservoir:
    """Algorithm R: a uniform sample of at most ``capacity`` rows of everything seen."""

    capacity: int
    seed: int = 0
    rows: list[Row] = field(default_factory=list)
    seen: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def add(self, rows: Sequence[Row]) -> None:
        for row in rows:
            self.seen += 1
            if len(self.rows) < self.capacity:
                self.rows.append(row)
            else:
                slot = self._rng.randrange(self.seen)
                if slot < self.capacity:
                    self.rows[slot] = row

    def shrink(self, capacity: int) -> None:
        del self.rows[capacity:]
        self.capacity = capacity


class CaptureService:
    """Receives captured inputs; implements ``core.ports.CapturedRows`` for the drift checks
    and the reoptimize action."""

    def __init__(self, settings: CaptureSettings, models: Mapping[str, CapturedModel],
                 metrics: CaptureMetrics) -> None:
        self.settings, self.models, self.metrics = settings, dict(models), metrics
        self.reservoirs: dict[tuple[str, int | None], Reservoir] = {}
        self.recent: dict[str, deque[tuple[int | None, Row]]] = {}
        self.buckets = RateBuckets(settings.client_rows_per_second)
        self._versions: dict[str, tuple[float, set[int]]] = {}

    async def specs(self, model: str) -> list[InputSpec]:
        """The model's signature inputs (CaptureRejected 404/409/503 when unknown/unreadable)."""
        entry = self.models.get(model)
        if entry is None:
            raise CaptureRejected(404, f"model {model!r} is not configured in tfwarden")
        if entry.client is None or entry.client.grpc_address is None:
            raise CaptureRejected(409, f"model {model!r}: capture needs the serving endpoint's "
                                       f"grpc_address to read the signature")
        try:
            return await entry.client.inputs(model)
        except ServingError as exc:
            raise CaptureRejected(503, f"cannot read the signature of {model!r}: {exc}") from None

    def _admit(self, client: str, rows: int) -> None:
        if not self.buckets.take(client, rows):
            raise CaptureRejected(429, f"client {client} is over "
                                       f"{self.settings.client_rows_per_second} rows/s; retry later")

    async def receive(self, model: str, body: bytes, client: str, kind: str,
                      version: int | None = None) -> dict[str, Any]:
        """Validate and keep one body (``kind`` capture or samples); CaptureRejected says why
        not, with the HTTP status."""
        try:
            rows, version = await self._parse(model, body, kind, version)
            if version is not None:
                await self._known_version(model, version)
            self._admit(client, len(rows))
        except CaptureRejected as exc:  # a model nobody configured gets no metric series
            self.metrics.captured(model if model in self.models else "", "rejected",
                                  exc.status, 1)
            raise
        reservoir = self.reservoirs.setdefault(
            (model, version), Reservoir(self.settings.reservoir_rows, seed=len(self.reservoirs)))
        reservoir.add(rows)
        if self.models[model].drift:
            recent = self.recent.setdefault(model, deque(maxlen=self.settings.recent_rows))
            if len(rows) + len(recent) > self.settings.recent_rows:  # the drift checks lag
                self.metrics.captured(model, "dropped", 200,
                                      len(rows) + len(recent) - self.settings.recent_rows)
            recent.extend((version, row) for row in rows)
        self.metrics.captured(model, "accepted", 200, len(rows))
        return {"accepted_rows": len(rows), "kept_rows": len(reservoir.rows),
                "seen_rows": reservoir.seen}

    async def _parse(self, model: str, body: bytes, kind: str,
                     version: int | None) -> tuple[list[Row], int | None]:
        if len(body) > self.settings.max_body_bytes:
            raise CaptureRejected(413, f"body of {len(body)} bytes is over "
                                       f"{self.settings.max_body_bytes}")
        specs = await self.specs(model)
        if len(body) <= INLINE_PARSE_BYTES:
            return _decode(body, specs, kind, version)
        # Larger bodies are parsed in a thread: the row conversion gives the loop its turn
        # every few milliseconds (json.loads of the largest body holds it ~35 ms at most).
        return await asyncio.to_thread(_decode, body, specs, kind, version)

    async def _known_version(self, model: str, version: int) -> None:
        """Reservoirs only for versions the server has (read with GetModelStatus, cached)."""
        cached = self._versions.get(model)
        now = time.monotonic()
        if cached is None or now - cached[0] > self.settings.signature_ttl_seconds or \
                version not in cached[1]:
            client = self.models[model].client
            assert client is not None  # specs() refused the body otherwise
            try:
                known = {v.version for v in await client.model_status(model)}
            except ServingError as exc:
                raise CaptureRejected(503, f"cannot read the versions of {model!r}: {exc}") \
                    from None
            cached = self._versions[model] = (now, known)
        if version not in cached[1]:
            raise CaptureRejected(404, f"model {model!r} has no version {version} on its server "
                                       f"(it has {sorted(cached[1])})")

    # -- core.ports.CapturedRows ---------------------------------------------------------------
    def take_new(self, model: str) -> list[tuple[int | None, Row]]:
        recent = self.recent.get(model)
        if not recent:
            return []
        rows = list(recent)
        recent.clear()
        return rows

    def kept_rows(self, model: str, version: int) -> tuple[list[str], list[Row]]:
        rows = [row for (m, v), reservoir in self.reservoirs.items()
                if m == model and v in (None, version) for row in reservoir.rows]
        return self.features(model), rows

    def features(self, model: str) -> list[str]:
        """Feature names of the model's last read signature ([] if none was read yet)."""
        entry = self.models.get(model)
        specs = entry.client.cached_inputs(model) if entry and entry.client else []
        return [n for s in specs for n in s.feature_names()]

    def stats(self, model: str) -> dict[str, Any]:
        return {"features": self.features(model),
                "reservoirs": [{"version": v, "kept_rows": len(r.rows), "seen_rows": r.seen,
                                "capacity": r.capacity}
                               for (m, v), r in sorted(self.reservoirs.items(),
                                                       key=lambda kv: str(kv[0])) if m == model]}

    def reconfigure(self, settings: CaptureSettings, models: Mapping[str, CapturedModel]) -> None:
        """New limits and models; the rows kept so far stay (cut to the new sizes)."""
        self.settings, self.models = settings, dict(models)
        self.buckets.rate = settings.client_rows_per_second
        self._versions.clear()
        for reservoir in self.reservoirs.values():
            reservoir.shrink(settings.reservoir_rows)
        for model, recent in list(self.recent.items()):
            self.recent[model] = deque(recent, maxlen=settings.recent_rows)


def _decode(body: bytes, specs: list[InputSpec], kind: str,
            version: int | None) -> tuple[list[Row], int | None]:
    """A capture (predict request) or samples body as rows of the signature's features."""
    try:
        document = json.loads(body)
    except RecursionError:
        raise CaptureRejected(400, "body is nested too deeply") from None
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of over 4,300 digits
        raise CaptureRejected(400, f"body is not JSON: {exc}") from None
    try:
        if kind == "capture":
            return rows_from_predict_body(document, specs), version
        return rows_from_samples(document, specs)
    except CaptureError as exc:
        raise CaptureRejected(400, str(exc)) from None
    except RecursionError:
        raise CaptureRejected(400, "body is nested too deeply for the signature") from None
