"""The PromQL probe against a real Prometheus server (Debian's prometheus, on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import free_port
from tfwarden.probes.promql import PromQLProbe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (apt-get install prometheus); scripts/test does")
    work = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = work / "prometheus.yml"
    config.write_text(f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: prometheus
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
""")
    log = open(work / "prometheus.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            body = httpx.get(f"{url}/api/v1/query", params={"query": "up"}).json()
            if body["data"]["result"]:
                break
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        assert time.monotonic() < deadline, Path(work / "prometheus.log").read_text()[-2000:]
        time.sleep(0.25)
    yield url
    proc.terminate()
    proc.wait(timeout=15)
    log.close()


def test_instant_query_becomes_samples(prometheus: str) -> None:
    async def scenario():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient() as client:
            good = PromQLProbe("prom-rss", prometheus,
                               'process_resident_memory_bytes{job="prometheus"}', "rss_bytes",
                               client, target_label="job")
            bad = PromQLProbe("broken", prometheus, "rate(up[", "x", client)
            return await good.run(), await bad.run()

    good, bad = asyncio.run(scenario())
    assert good.ok, good.error
    (sample,) = good.samples
    assert sample.target == "prometheus" and sample.metric == "rss_bytes"
    assert sample.value > 10 * 2**20
    assert not bad.ok and "bad_data" in str(bad.error)
