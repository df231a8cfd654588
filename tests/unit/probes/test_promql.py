from __future__ import annotations

import asyncio
import json

import httpx

from tfwarden.probes.promql import PromQLProbe


def run(body: object, status: int = 200, **kwargs) -> object:  # type: ignore[no-untyped-def]
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(status, text=json.dumps(body))

    async def scenario():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            probe = PromQLProbe("tfs-rss", "http://prom:9090/", "container_memory_rss", "rss_bytes",
                                client, **kwargs)
            return await probe.run()

    result = asyncio.run(scenario())
    assert str(seen[0]).startswith("http://prom:9090/api/v1/query?query=container_memory_rss")
    return result


def test_vector_series_become_samples_with_targets() -> None:
    body = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"pod": "tfs-0", "model_name": "m"}, "value": [1764000000.0, "812000000"]},
        {"metric": {"pod": "tfs-1", "model_name": "m"}, "value": [1764000000.0, "790000000"]}]}}
    result = run(body, target_label="pod")
    assert result.ok  # type: ignore[attr-defined]
    samples = result.samples  # type: ignore[attr-defined]
    assert [(s.target, s.metric, s.value, s.model) for s in samples] == [
        ("tfs-0", "rss_bytes", 812000000.0, "m"), ("tfs-1", "rss_bytes", 790000000.0, "m")]


def test_scalar_result_and_errors_are_results_not_exceptions() -> None:
    scalar = run({"status": "success", "data": {"resultType": "scalar", "result": [1.0, "3"]}})
    assert scalar.ok and scalar.samples[0].value == 3.0  # type: ignore[attr-defined]
    bad = run({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"},
              status=400)
    assert not bad.ok and "bad_data: parse error" in bad.error  # type: ignore[attr-defined]
    nan = run({"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {}, "value": [1.0, "NaN"]}]}})
    assert not nan.ok and "non-finite" in nan.error  # type: ignore[attr-defined]
    matrix = run({"status": "success", "data": {"resultType": "matrix", "result": []}})
    assert not matrix.ok  # type: ignore[attr-defined]
