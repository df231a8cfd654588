from __future__ import annotations

import asyncio
from pathlib import Path

from tests.helpers import TESTDATA
from tfwarden.probes.memory import CgroupMemoryProbe, ProcessMemoryProbe


def test_process_rss_and_pss_from_a_recorded_proc_tree() -> None:
    probe = ProcessMemoryProbe("tfs", pid_file=TESTDATA / "proc" / "tfs.pid",
                               limit_bytes=4 << 30, proc=TESTDATA / "proc")
    result = asyncio.run(probe.run())
    assert result.ok and result.error is None
    values = {s.metric: s.value for s in result.samples}
    assert values == {"rss_bytes": 812500 * 1024, "pss_bytes": 790000 * 1024,
                      "limit_bytes": 4 << 30}
    assert all(s.target == "tfs" for s in result.samples)


def test_missing_process_is_a_failed_result_not_an_exception(tmp_path: Path) -> None:
    result = asyncio.run(ProcessMemoryProbe("gone", pid=999999, proc=tmp_path).run())
    assert not result.ok and "cannot read process memory" in str(result.error)
    assert result.samples == ()


def test_cgroup_current_and_max() -> None:
    result = asyncio.run(CgroupMemoryProbe("tfs", TESTDATA / "cgroup" / "tfs").run())
    assert result.ok
    assert {s.metric: s.value for s in result.samples} == {
        "cgroup_current_bytes": 1 << 30, "limit_bytes": 4 << 30}
    unlimited = asyncio.run(CgroupMemoryProbe("u", TESTDATA / "cgroup" / "unlimited").run())
    assert [s.metric for s in unlimited.samples] == ["cgroup_current_bytes"]
    assert unlimited.detail["max_bytes"] is None


def test_own_process_is_readable() -> None:
    import os

    result = asyncio.run(ProcessMemoryProbe("self", pid=os.getpid()).run())
    assert result.ok and result.detail["rss_bytes"] > 10 << 20
