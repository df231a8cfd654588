"""The Router contract (``lifecycle.routers.base.Router``), run over every router: labels, shadow,
nginx (a real Debian nginx in front of a loopback upstream) and the RecordingRouter fake."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, get_args

import httpx
import pytest

from tests.fakes import RecordingRouter
from tests.helpers import Nginx, free_port
from tfwarden.core.errors import RouterError
from tfwarden.lifecycle.routers.base import LabelsRouter, Router, ShadowRouter
from tfwarden.lifecycle.routers.nginx import NginxRouter
from tfwarden.lifecycle.settings import LifecycleSettings

REGISTRY_NAMES = set(get_args(LifecycleSettings.model_fields["router"].annotation))
MODEL = "m"


# -- a real nginx, once per module, in front of an upstream that answers with the path it got ----
class _EchoPath(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class NginxStack:
    nginx: Nginx
    upstream: str

    def router(self, binary: str | None = None, mirror_url: str | None = None) -> NginxRouter:
        return NginxRouter(include_dir=self.nginx.include, conf=self.nginx.conf,
                           prefix=self.nginx.work, upstream=self.upstream,
                           binary=binary or self.nginx.binary, mirror_url=mirror_url)

    def include_files(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(self.nginx.include.iterdir())}

    def labels_routed(self, model: str, requests: int) -> Counter[str]:
        """The label each unaddressed predict call reached, or its status when it reached none
        (a new connection per call: no keep-alive connection pins a worker of an old config)."""
        seen: Counter[str] = Counter()
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(base_url=self.nginx.url, limits=limits, timeout=5) as client:
            responses = [client.post(f"/v1/models/{model}:predict", json={"instances": [1.0]})
                         for _ in range(requests)]
        for response in responses:
            if response.status_code != 200:  # e.g. before nginx has a location for the model
                seen[f"status {response.status_code}"] += 1
                continue
            path = response.json()["path"]
            match = re.fullmatch(rf"/v1/models/{re.escape(model)}/labels/(\w+):predict", path)
            seen[match.group(1) if match else f"path {path}"] += 1
        return seen

    def wait_for_labels(self, model: str, expected: set[str], requests: int = 40,
                        timeout: float = 10.0) -> Counter[str]:
        """Poll until a round of calls reaches exactly ``expected`` (a reload takes a moment)."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.labels_routed(model, requests)
            if set(seen) == expected or time.monotonic() > deadline:
                return seen
            time.sleep(0.05)


@pytest.fixture(scope="module")
def nginx_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStack]:
    upstream = ThreadingHTTPServer(("127.0.0.1", free_port()), _EchoPath)
    thread = threading.Thread(target=upstream.serve_forever, daemon=True)
    thread.start()
    try:
        nginx = Nginx(tmp_path_factory.mktemp("nginx"), include_name="tfwarden")
        try:
            yield NginxStack(nginx, f"http://127.0.0.1:{upstream.server_port}")
        finally:
            nginx.stop()
    finally:
        upstream.shutdown()
        upstream.server_close()


# -- one case per implementation ----------------------------------------------------------------
@dataclass
class RouterCase:
    """A router under test, what its registry kind is, and how to see the weight it routes."""

    router: Router
    kind: str
    # what it documents for a weight outside 0..100: RouterError ("refused"), or nothing to
    # refuse because the weight is informative only ("ignored") or merely recorded ("recorded")
    out_of_range: Literal["refused", "ignored", "recorded"]
    in_force: Callable[[str], int | None]  # the weight now routed; None: nothing routed

    def expected(self, weight: int) -> int | None:
        """What ``in_force`` shows after ``weight`` was applied."""
        return None if self.out_of_range == "ignored" else weight


def _nginx_weight(stack: NginxStack) -> Callable[[str], int | None]:
    def in_force(model: str) -> int | None:
        path = stack.nginx.include / f"{model}.http.conf"
        if not path.exists():
            return None
        match = re.search(r"canary weight (\d+) %", path.read_text())
        assert match, path.read_text()
        return int(match.group(1))
    return in_force


def _recorded_weight(router: RecordingRouter) -> Callable[[str], int | None]:
    def in_force(model: str) -> int | None:
        weights = [w for m, w in router.applied if m == model]
        return weights[-1] if weights else None
    return in_force


def _nothing(model: str) -> None:
    return None


def _clean(stack: NginxStack) -> None:
    for path in stack.nginx.include.iterdir():
        path.unlink()


@pytest.fixture(params=["labels", "shadow",
                        pytest.param("nginx", marks=pytest.mark.integration),
                        pytest.param("nginx-mirror", marks=pytest.mark.integration),
                        "recording"])
def case(request: pytest.FixtureRequest) -> RouterCase:
    if request.param == "labels":
        return RouterCase(LabelsRouter(), "labels", "ignored", _nothing)
    if request.param == "shadow":
        return RouterCase(ShadowRouter(), "shadow", "ignored", _nothing)
    if request.param == "recording":
        recording = RecordingRouter()
        # the fake stands in for the labels router: every weight is recorded, none refused
        return RouterCase(recording, "labels", "recorded", _recorded_weight(recording))
    stack: NginxStack = request.getfixturevalue("nginx_stack")
    _clean(stack)
    mirror = f"http://127.0.0.1:{free_port()}/capture" if request.param == "nginx-mirror" else None
    return RouterCase(stack.router(mirror_url=mirror), "nginx", "refused", _nginx_weight(stack))


def apply(router: Router, model: str, weight: int) -> None:
    asyncio.run(router.apply(model, weight))


# -- the contract -------------------------------------------------------------------------------
def test_name_is_the_registry_kind(case: RouterCase) -> None:
    assert REGISTRY_NAMES == {"labels", "shadow", "nginx"}
    assert case.router.name == case.kind


def test_weights_0_to_100_are_accepted(case: RouterCase) -> None:
    for weight in (0, 25, 100):
        apply(case.router, MODEL, weight)
        assert case.in_force(MODEL) == case.expected(weight)


def test_the_same_weight_twice_is_fine(case: RouterCase) -> None:
    apply(case.router, MODEL, 25)
    apply(case.router, MODEL, 25)
    assert case.in_force(MODEL) == case.expected(25)


def test_models_are_routed_independently(case: RouterCase) -> None:
    apply(case.router, MODEL, 10)
    apply(case.router, "resnet-50.v2", 90)
    apply(case.router, MODEL, 0)
    assert case.in_force(MODEL) == case.expected(0)
    assert case.in_force("resnet-50.v2") == case.expected(90)


@pytest.mark.parametrize("weight", [-1, 101])
def test_an_out_of_range_weight(case: RouterCase, weight: int) -> None:
    apply(case.router, MODEL, 25)
    if case.out_of_range == "refused":
        with pytest.raises(RouterError, match=rf"weight must be 0\.\.100, got {weight}"):
            apply(case.router, MODEL, weight)
        assert case.in_force(MODEL) == 25  # the previous routing stays in force
    elif case.out_of_range == "recorded":
        apply(case.router, MODEL, weight)
        assert case.in_force(MODEL) == weight
    else:
        assert case.out_of_range == "ignored"
        apply(case.router, MODEL, weight)  # informative only: nothing to refuse
        assert case.in_force(MODEL) is None


def test_recording_router_refuses_when_told_to() -> None:
    router = RecordingRouter(fail=True)
    with pytest.raises(RouterError, match="routing of 'm' refused"):
        apply(router, MODEL, 25)
    assert router.applied == []


# -- nginx: the routing in force is what live traffic shows --------------------------------------


@pytest.mark.integration
def test_nginx_traffic_follows_the_weight(nginx_stack: NginxStack) -> None:
    _clean(nginx_stack)
    router = nginx_stack.router()
    apply(router, MODEL, 0)
    assert nginx_stack.wait_for_labels(MODEL, {"stable"}) == Counter(stable=40)
    apply(router, MODEL, 100)
    assert nginx_stack.wait_for_labels(MODEL, {"canary"}) == Counter(canary=40)
    apply(router, MODEL, 25)
    nginx_stack.wait_for_labels(MODEL, {"stable", "canary"})  # the reload is in force
    seen = nginx_stack.labels_routed(MODEL, 200)
    # nginx splits on its random $request_id: 50 expected, the bounds are about 5.7 sigma away
    assert seen["stable"] + seen["canary"] == 200 and 15 <= seen["canary"] <= 90, seen


@pytest.mark.integration
def test_nginx_same_weight_twice_writes_the_same_files(nginx_stack: NginxStack) -> None:
    _clean(nginx_stack)
    router = nginx_stack.router()
    apply(router, MODEL, 40)
    first = nginx_stack.include_files()
    apply(router, MODEL, 40)
    assert nginx_stack.include_files() == first
    assert sorted(first) == ["m.http.conf", "m.server.conf"]


def _refusing_binary(directory: Path, real: str, refuse: str) -> str:
    """An nginx that fails (exit 1) when called with ``refuse`` and is the real one otherwise."""
    script = directory / f"nginx-refusing{refuse}"
    script.write_text(f"""#!/bin/sh
for arg in "$@"; do
    if [ "$arg" = "{refuse}" ]; then echo "nginx: [emerg] refused by the test ($*)"; exit 1; fi
done
exec {real} "$@"
""")
    script.chmod(0o755)
    return str(script)


@pytest.mark.integration
def test_nginx_refused_by_nginx_t_keeps_the_previous_files_and_routing(
        nginx_stack: NginxStack, tmp_path: Path) -> None:
    _clean(nginx_stack)
    apply(nginx_stack.router(), MODEL, 0)
    assert nginx_stack.wait_for_labels(MODEL, {"stable"}) == Counter(stable=40)
    before = nginx_stack.include_files()
    refusing = nginx_stack.router(binary=_refusing_binary(tmp_path, nginx_stack.nginx.binary, "-t"))
    with pytest.raises(RouterError, match=r"nginx -t refused the routing for 'm'; previous routing "
                                          r"kept: nginx: \[emerg\] refused by the test"):
        apply(refusing, MODEL, 100)
    assert nginx_stack.include_files() == before
    assert nginx_stack.labels_routed(MODEL, 40) == Counter(stable=40)


@pytest.mark.integration
def test_nginx_reload_refused_keeps_the_previous_files_for_the_next_reload(
        nginx_stack: NginxStack, tmp_path: Path) -> None:
    _clean(nginx_stack)
    apply(nginx_stack.router(), MODEL, 0)
    before = nginx_stack.include_files()
    refusing = nginx_stack.router(binary=_refusing_binary(tmp_path, nginx_stack.nginx.binary,
                                                          "reload"))
    with pytest.raises(RouterError, match="nginx reload failed for 'm'; previous routing kept"):
        apply(refusing, MODEL, 100)
    assert nginx_stack.include_files() == before
    apply(nginx_stack.router(), "other", 10)  # a later reload must not bring weight 100 in
    assert nginx_stack.labels_routed(MODEL, 40) == Counter(stable=40)


@pytest.mark.integration
def test_nginx_that_hangs_is_killed_and_the_previous_files_kept(nginx_stack: NginxStack,
                                                                 tmp_path: Path) -> None:
    _clean(nginx_stack)
    apply(nginx_stack.router(), MODEL, 0)
    before = nginx_stack.include_files()
    script = tmp_path / "nginx-hanging"
    script.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 60\n")
    script.chmod(0o755)
    hanging = nginx_stack.router(binary=str(script))
    hanging.timeout_seconds = 0.5
    with pytest.raises(RouterError, match="did not finish in 0.5 s"):
        apply(hanging, MODEL, 100)
    assert nginx_stack.include_files() == before
    pid = int((tmp_path / "pid").read_text())
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # killed (a zombie at most)


@pytest.mark.integration
def test_nginx_refused_for_a_new_model_leaves_no_files(nginx_stack: NginxStack,
                                                       tmp_path: Path) -> None:
    _clean(nginx_stack)
    apply(nginx_stack.router(), MODEL, 30)
    before = nginx_stack.include_files()
    refusing = nginx_stack.router(binary=_refusing_binary(tmp_path, nginx_stack.nginx.binary, "-t"))
    with pytest.raises(RouterError, match="nginx -t refused the routing for 'other'"):
        apply(refusing, "other", 50)
    assert nginx_stack.include_files() == before


@pytest.mark.integration
def test_nginx_refuses_a_config_nginx_cannot_load(nginx_stack: NginxStack) -> None:
    _clean(nginx_stack)
    apply(nginx_stack.router(), MODEL, 0)
    assert nginx_stack.wait_for_labels(MODEL, {"stable"}) == Counter(stable=40)
    before = nginx_stack.include_files()
    broken = NginxRouter(include_dir=nginx_stack.nginx.include, conf=nginx_stack.nginx.conf,
                         prefix=nginx_stack.nginx.work, upstream="http://[not-a-host",
                         binary=nginx_stack.nginx.binary)
    with pytest.raises(RouterError, match="nginx -t refused the routing for 'm'"):
        apply(broken, MODEL, 100)
    assert nginx_stack.include_files() == before
    assert nginx_stack.labels_routed(MODEL, 20) == Counter(stable=20)

