"""OTLP metrics from the real SDK -> edge histogram deltas and values."""

from __future__ import annotations

from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from tfwarden.probes.edge.otlp import ExportMetricsServiceRequest
from tfwarden.probes.edge.points import Deltas, DeviceHasher, flatten

DEVICE = {"ml.model.name": "m", "ml.model.version": "2", "ml.delegate": "gpu",
          "device.id": "raw-device-7", "device.model.identifier": "pixel-8"}
HASH = DeviceHasher(b"k")


class Device:
    """One simulated device: the SDK with its OTLP encoder, as a real client exports."""

    def __init__(self, resource: dict[str, str] = DEVICE, unit: str = "ms",
                 delta: bool = False) -> None:
        temporality = {Histogram: AggregationTemporality.DELTA} if delta else {}
        self.reader = InMemoryMetricReader(preferred_temporality=temporality)
        self.provider = MeterProvider(
            resource=Resource.create(resource), metric_readers=[self.reader],
            views=[View(instrument_name="ml.*",
                        aggregation=ExplicitBucketHistogramAggregation([1, 5, 10, 50]))])
        meter = self.provider.get_meter("edge")
        self.inference = meter.create_histogram("ml.inference.duration", unit=unit)
        self.memory = meter.create_gauge("process.memory.usage", unit="By")
        self.other = meter.create_counter("app.clicks")

    def export(self) -> ExportMetricsServiceRequest:
        data = self.reader.get_metrics_data()
        assert data is not None
        request: ExportMetricsServiceRequest = encode_metrics(data)
        return request


def test_cumulative_histograms_become_deltas_per_stream_with_the_device_hashed() -> None:
    device, deltas = Device(), Deltas(100)
    for ms in (0.5, 3, 3, 70):
        device.inference.record(ms)
    first = flatten(device.export(), deltas, HASH)
    (h,) = first.histograms
    assert (h.model, h.version, h.metric) == ("m", "2", "ml.inference.duration")
    assert h.bounds == (1, 5, 10, 50) and h.counts == (1, 2, 0, 0, 1) and h.count == 4
    assert h.device == HASH("raw-device-7") and h.device != "raw-device-7"
    assert "device.id" not in h.attributes and h.attributes["ml.delegate"] == "gpu"
    assert "raw-device-7" not in repr(first)  # never kept raw
    device.inference.record(7)
    (second,) = flatten(device.export(), deltas, HASH).histograms
    assert second.counts == (0, 0, 1, 0, 0) and second.count == 1 and second.total == 7
    assert flatten(device.export(), deltas, HASH).histograms == []  # nothing new


def test_seconds_become_milliseconds_and_delta_temporality_is_taken_as_it_comes() -> None:
    device = Device(unit="s", delta=True)
    device.inference.record(0.003)
    (h,) = flatten(device.export(), Deltas(10), HASH).histograms
    assert h.bounds == (1000, 5000, 10000, 50000)  # the view's bounds were in seconds
    assert h.total == 3.0 and h.counts == (1, 0, 0, 0, 0)


def test_a_restarted_stream_counts_from_zero_and_streams_are_bounded() -> None:
    deltas = Deltas(2)
    first = Device()
    first.inference.record(3)
    flatten(first.export(), deltas, HASH)
    restarted = Device()  # the app restarted: a new start time, counts from zero
    restarted.inference.record(70)
    (h,) = flatten(restarted.export(), deltas, HASH).histograms
    assert h.counts == (0, 0, 0, 0, 1) and h.count == 1
    for n in range(5):
        other = Device({**DEVICE, "device.id": f"d{n}"})
        other.inference.record(3)
        flatten(other.export(), deltas, HASH)
    assert len(deltas) == 2


def test_memory_values_and_what_is_rejected_with_the_reasons() -> None:
    device = Device()
    device.memory.set(52_000_000)
    device.other.add(1)
    flattened = flatten(device.export(), Deltas(10), HASH)
    (value,) = flattened.values
    assert (value.metric, value.value, value.model) == ("process.memory.usage", 52e6, "m")
    assert flattened.rejected == 1 and "app.clicks" in flattened.reasons[0]

    anonymous = Device({"device.id": "x"})
    anonymous.inference.record(3)
    refused = flatten(anonymous.export(), Deltas(10), HASH)
    assert refused.histograms == [] and refused.rejected == 1
    assert "ml.model.name and ml.model.version" in refused.reasons[0]

    minutes = Device(unit="min")
    minutes.inference.record(3)
    refused = flatten(minutes.export(), Deltas(10), HASH)
    assert refused.rejected == 1 and "histogram in ms or s" in refused.reasons[0]


def test_malformed_histograms_are_rejected() -> None:
    device = Device()
    device.inference.record(3)
    request = device.export()
    point: Any = request.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[0]
    point.bucket_counts.append(1)  # one count too many for the bounds
    flattened = flatten(request, Deltas(10), HASH)
    assert flattened.histograms == [] and flattened.rejected == 1
