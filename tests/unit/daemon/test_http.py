from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tfwarden.core.errors import ActionRefused
from tfwarden.daemon.http import create_app
from tfwarden.daemon.recorder import Recorder


class FakeDaemon:
    def __init__(self, token: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.recorder = Recorder(self.registry, version="test")
        self.token = token
        self.ingest_token: str | None = None
        self.captured: list[bytes] = []
        self.ready = False
        self.stopping = False
        self.max_body_bytes = 1024
        self.reloads: list[str] = []
        self.reload_ok = True

    def bearer_token(self) -> str | None:
        return self.token

    def ingest_tokens(self) -> tuple[str, ...]:
        return tuple(t for t in (self.ingest_token, self.token) if t is not None)

    def status(self) -> dict[str, Any]:
        return {"ready": self.ready, "config": {"generation": 1}}

    def probes_debug(self) -> dict[str, Any]:
        return {"predict": []}

    def findings(self) -> list[dict[str, Any]]:
        return []

    def models(self) -> list[dict[str, Any]]:
        return []

    def model(self, name: str) -> dict[str, Any] | None:
        return {"model": name} if name == "m" else None

    def journal(self, after_id: int, limit: int, kind: str | None,
                model: str | None, newest_first: bool = False) -> list[dict[str, Any]]:
        return [{"id": after_id + 1, "kind": kind, "newest_first": newest_first}]

    async def manual_action(self, model: str, action: str) -> dict[str, Any]:
        if action == "resume":
            raise ActionRefused("model 'm' is not paused")
        return {"model": model, "action": action}

    def receive_alerts(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"accepted": len(payload["alerts"]), "ignored": 0}

    async def capture(self, model: str, body: bytes, client: str, kind: str,
                      version: int | None) -> dict[str, Any]:
        self.captured.append(body)
        return {"accepted_rows": 1}

    def drift_report(self, name: str) -> dict[str, Any] | None:
        return None

    def capture_stats(self, model: str) -> dict[str, Any]:
        return {}

    async def reload(self, trigger: str) -> dict[str, Any]:
        self.reloads.append(trigger)
        if self.reload_ok:
            return {"ok": True, "generation": 2}
        return {"ok": False, "generation": 1, "error": "x.yaml: bogus: unknown field"}


def call(daemon: FakeDaemon, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(daemon))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_ready_reflects_startup_and_shutdown() -> None:
    daemon = FakeDaemon()
    response = call(daemon, "GET", "/-/ready")
    assert response.status_code == 503 and response.json() == {"status": "starting"}
    daemon.ready = True
    assert call(daemon, "GET", "/-/ready").status_code == 200
    daemon.ready, daemon.stopping = False, True
    assert call(daemon, "GET", "/-/ready").json() == {"status": "stopping"}
    assert call(daemon, "GET", "/-/healthy").status_code == 200


def test_metrics_parse_with_prometheus_parser() -> None:
    response = call(FakeDaemon(), "GET", "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(response.text)}
    assert {"tfwarden_build_info", "tfwarden_config_last_reload_successful",
            "process_resident_memory_bytes"} <= names


def test_reload_without_token_configured() -> None:
    daemon = FakeDaemon()
    assert call(daemon, "POST", "/-/reload").json() == {"ok": True, "generation": 2}
    daemon.reload_ok = False
    response = call(daemon, "POST", "/-/reload")
    assert response.status_code == 400
    assert "unknown field" in response.json()["error"]


def test_write_endpoints_require_the_bearer_token() -> None:
    daemon = FakeDaemon(token="s3cret")
    missing = call(daemon, "POST", "/-/reload")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert "missing bearer token" in missing.json()["error"]
    wrong = call(daemon, "POST", "/-/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    assert daemon.reloads == []
    good = call(daemon, "POST", "/-/reload", headers={"Authorization": "Bearer s3cret"})
    assert good.status_code == 200 and daemon.reloads == ["http"]
    assert daemon.registry.get_sample_value(
        "tfwarden_http_unauthorized_requests_total", {"path": "/-/reload"}) == 2
    # reads stay open
    assert call(daemon, "GET", "/api/v1/status").status_code == 200


def test_unknown_paths_and_methods_are_json_errors() -> None:
    response = call(FakeDaemon(), "GET", "/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "no such endpoint: GET /nope"}
    response = call(FakeDaemon(), "GET", "/-/reload")
    assert response.status_code == 405 and "not allowed" in response.json()["error"]


def test_reload_is_refused_while_stopping() -> None:
    daemon = FakeDaemon()
    daemon.stopping = True
    response = call(daemon, "POST", "/-/reload")
    assert response.status_code == 503 and daemon.reloads == []


def test_model_actions_need_the_token_and_answer_in_json() -> None:
    daemon = FakeDaemon(token="t")
    auth = {"Authorization": "Bearer t"}
    assert call(daemon, "POST", "/api/v1/models/m/rollback").status_code == 401
    assert call(daemon, "POST", "/api/v1/models/m/rollback", headers=auth).json() == {
        "model": "m", "action": "rollback"}
    response = call(daemon, "POST", "/api/v1/models/m/explode", headers=auth)
    assert response.status_code == 404 and "unknown action" in response.json()["error"]
    assert call(daemon, "POST", "/api/v1/models/x/rollback", headers=auth).status_code == 404
    conflict = call(daemon, "POST", "/api/v1/models/m/resume", headers=auth)
    assert conflict.status_code == 409 and conflict.json() == {"error": "model 'm' is not paused"}
    assert call(daemon, "GET", "/api/v1/models/nope").status_code == 404


def test_alertmanager_webhook_validates_its_payload() -> None:
    daemon = FakeDaemon()
    good = call(daemon, "POST", "/api/v1/alertmanager", json={"alerts": [{"status": "firing"}]})
    assert good.json() == {"accepted": 1, "ignored": 0}
    bad = call(daemon, "POST", "/api/v1/alertmanager", content=b"not json")
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]
    shape = call(daemon, "POST", "/api/v1/alertmanager", json={"foo": 1})
    assert shape.status_code == 400
    assert call(daemon, "GET", "/api/v1/journal?limit=5000").status_code == 400
    assert call(daemon, "GET", "/api/v1/journal?after=7&kind=decision").json() == {
        "entries": [{"id": 8, "kind": "decision", "newest_first": False}]}
    assert call(daemon, "GET", "/api/v1/journal?order=desc").json()["entries"][0]["newest_first"]
    bad_order = call(daemon, "GET", "/api/v1/journal?order=sideways")
    assert bad_order.status_code == 400 and "order must be" in bad_order.json()["error"]


def test_journal_after_is_an_id_the_store_can_compare() -> None:
    daemon = FakeDaemon()
    for after in ("-1", str(2**63), "9" * 30):  # 2**63 made SQLite raise OverflowError: a 500
        response = call(daemon, "GET", f"/api/v1/journal?after={after}")
        assert response.status_code == 400 and "after must be" in response.json()["error"]
    assert call(daemon, "GET", f"/api/v1/journal?after={2**63 - 1}").status_code == 200


def test_an_unexpected_error_is_still_a_json_500() -> None:
    daemon = FakeDaemon()

    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("a bug")

    daemon.findings = broken  # type: ignore[method-assign]

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(daemon), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/api/v1/findings")

    response = asyncio.run(go())
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (RuntimeError) on GET /api/v1/findings; "
                                        "the daemon's log has the traceback"}


def test_capture_takes_the_ingest_or_the_operator_token_when_one_is_configured() -> None:
    open_daemon = FakeDaemon()
    assert call(open_daemon, "POST", "/api/v1/capture/m", json={"instances": [1]}).status_code \
        == 200
    daemon = FakeDaemon(token="ops")
    daemon.ingest_token = "mirror"
    for path in ("/api/v1/capture/m", "/api/v1/samples/m"):
        assert call(daemon, "POST", path, json={"rows": [[1]]}).status_code == 401
        assert call(daemon, "POST", path, json={"rows": [[1]]},
                    headers={"Authorization": "Bearer nope"}).status_code == 403
        for token in ("mirror", "ops"):
            assert call(daemon, "POST", path, json={"rows": [[1]]},
                        headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert len(daemon.captured) == 4
    refused = daemon.registry.get_sample_value(  # counted by route, not by the path asked for
        "tfwarden_http_unauthorized_requests_total", {"path": "/api/v1/capture/{model}"})
    assert refused == 2


def test_bodies_are_limited_while_they_stream_in() -> None:
    daemon = FakeDaemon()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):  # no Content-Length: chunked, 100 KiB in all
            yield b"[" * 1024

    big = call(daemon, "POST", "/api/v1/capture/m", content=chunks())
    assert big.status_code == 413 and big.json() == {"error": "body is over 1024 bytes"}
    assert daemon.captured == []
    webhook = call(daemon, "POST", "/api/v1/alertmanager", content=b" " * (2 * 1024 * 1024))
    assert webhook.status_code == 413


def test_deeply_nested_json_is_a_400_not_a_500() -> None:
    daemon = FakeDaemon()
    for depth in (65, 100_000):
        body = b"[" * depth + b"]" * depth
        response = call(daemon, "POST", "/api/v1/alertmanager", content=body)
        assert response.status_code == 400, depth
        assert "nested deeper" in response.json()["error"] or "not JSON" in \
            response.json()["error"]
    labels = call(daemon, "POST", "/api/v1/alertmanager", json={"alerts": [{"labels": "x"}]})
    assert labels.status_code == 200
