"""The nginx router with a real nginx (Debian's) in front of the devserver."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import text_format

from tests.helpers import TESTDATA, DevServer, Nginx
from tfwarden.core.errors import RouterError
from tfwarden.lifecycle.routers.nginx import NginxRouter

pytestmark = pytest.mark.integration
TFS = TESTDATA / "tfserving"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("nginx")
    base = work / "models" / "m"
    shutil.copytree(TFS / "saved_model_half_plus_two_cpu" / "00000123", base / "1")
    shutil.copytree(TFS / "saved_model_half_plus_three" / "00000123", base / "2")
    config = work / "models.config"
    entry = (f'name: "m" base_path: "{base}" model_platform: "tensorflow" '
             'model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}')
    config.write_text(f"model_config_list {{ config {{ {entry.format()} }} }}")
    dev = DevServer(f"--model_config_file={config}", workdir=work)
    dev.wait_ready()
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(f'model_config_list {{ config {{ {entry.format()} '
                      'version_labels { key: "stable" value: 1 } '
                      'version_labels { key: "canary" value: 2 } } }', request.config)
    with grpc.insecure_channel(dev.grpc_address) as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request,
                                                                                   timeout=30)
    nginx = Nginx(work, include_name="tfwarden")
    include, port, conf, binary = nginx.include, nginx.port, nginx.conf, nginx.binary
    router = NginxRouter(include_dir=include, conf=conf, prefix=work, upstream=dev.rest_url,
                         binary=binary)
    yield {"router": router, "url": f"http://127.0.0.1:{port}", "binary": binary, "conf": conf,
           "work": work}
    nginx.stop()
    dev.stop()


def outputs(url: str, n: int, path: str = "/v1/models/m:predict") -> list[float]:
    values = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(n):
            response = client.post(path, json={"instances": [2.0]})
            assert response.status_code == 200, response.text
            values.append(response.json()["predictions"][0])
    return values


def nginx_workers(work: Path) -> set[int]:
    """The nginx master's worker processes, once it has any (it may still be starting)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            master = int((work / "nginx.pid").read_text())
            children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except (OSError, ValueError):  # no pid file yet
            children = []
        if children:
            return {int(pid) for pid in children}
        assert time.monotonic() < deadline, "nginx has no worker process"
        time.sleep(0.02)


def apply(stack: dict[str, Any], weight: int) -> None:
    """Apply ``weight`` and wait until the workers of the previous configuration are gone (the
    reload replaces them; how long that takes is up to the machine)."""
    old = nginx_workers(stack["work"])
    asyncio.run(stack["router"].apply("m", weight))
    deadline = time.monotonic() + 30
    while nginx_workers(stack["work"]) & old:
        assert time.monotonic() < deadline, f"nginx kept its old workers {old} after a reload"
        time.sleep(0.02)


def test_weighted_split_between_stable_and_canary(stack: dict[str, Any]) -> None:
    apply(stack, 30)
    values = outputs(stack["url"], 300)
    canary = values.count(4.0)  # version 2 is half_plus_three
    assert values.count(3.0) + canary == 300
    assert abs(canary - 90) <= 4 * (300 * 0.3 * 0.7) ** 0.5, canary
    apply(stack, 0)
    assert set(outputs(stack["url"], 100)) == {3.0}
    apply(stack, 100)
    assert set(outputs(stack["url"], 50)) == {4.0}


def test_unaddressed_non_predict_calls_never_reach_the_canary(stack: dict[str, Any]) -> None:
    apply(stack, 100)
    with httpx.Client(base_url=stack["url"], timeout=10) as client:
        for _ in range(20):
            result = client.post("/v1/models/m:regress", json={
                "signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
            assert result.json() == {"results": [3.0]}  # version 1 (version 2 lacks it)
        explicit = client.post("/v1/models/m/labels/canary:predict", json={"instances": [2.0]})
        assert explicit.json() == {"predictions": [4.0]}
        version = client.post("/v1/models/m/versions/1:predict", json={"instances": [2.0]})
        assert version.json() == {"predictions": [3.0]}
    apply(stack, 0)


def test_a_config_nginx_refuses_is_rolled_back(stack: dict[str, Any]) -> None:
    apply(stack, 0)
    broken = NginxRouter(include_dir=stack["router"].include_dir, conf=stack["conf"],
                         prefix=stack["work"], upstream="http://[not-a-host", binary=stack["binary"])
    with pytest.raises(RouterError, match="nginx -t refused"):
        asyncio.run(broken.apply("m", 50))
    assert "canary weight 0 %" in (stack["router"].include_dir / "m.http.conf").read_text()
    assert set(outputs(stack["url"], 20)) == {3.0}  # previous routing still in force
