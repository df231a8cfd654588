"""Memory probe: RSS and PSS of a process from /proc, or a cgroup v2's memory.current/max."""

from __future__ import annotations

import time
from pathlib import Path

from tfwarden.core.clock import Clock, SystemClock
from tfwarden.core.types import ProbeResult, Sample

SOURCE = "memory"


def _kib_field(text: str, name: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return None


class ProcessMemoryProbe:
    """RSS (and PSS when smaps_rollup is readable) of a pid, or of the pid in a pid file."""

    def __init__(self, target: str, *, pid: int | None = None, pid_file: Path | None = None,
                 limit_bytes: int | None = None, proc: Path = Path("/proc"),
                 clock: Clock | None = None) -> None:
        self.name = f"memory:{target}"
        self.target = target
        self._pid, self._pid_file, self._limit = pid, pid_file, limit_bytes
        self._proc = proc
        self._clock = clock or SystemClock()

    def _resolve_pid(self) -> int:
        if self._pid is not None:
            return self._pid
        assert self._pid_file is not None
        return int(self._pid_file.read_text().split()[0])

    async def run(self) -> ProbeResult:
        t, started = self._clock.now(), time.monotonic()
        try:
            pid = self._resolve_pid()
            status = (self._proc / str(pid) / "status").read_text()
        except (OSError, ValueError, IndexError) as exc:
            return ProbeResult(self.name, self.target, t, False, time.monotonic() - started,
                               error=f"cannot read process memory: {exc}")
        rss = _kib_field(status, "VmRSS")
        if rss is None:
            return ProbeResult(self.name, self.target, t, False, time.monotonic() - started,
                               error=f"pid {pid} has no VmRSS (a kernel thread or a zombie)")
        labels = {"pid": str(pid)}
        samples = [Sample(t, SOURCE, "rss_bytes", rss, target=self.target, labels=labels)]
        try:
            pss = _kib_field((self._proc / str(pid) / "smaps_rollup").read_text(), "Pss")
        except OSError:
            pss = None
        if pss is not None:
            samples.append(Sample(t, SOURCE, "pss_bytes", pss, target=self.target, labels=labels))
        if self._limit is not None:
            samples.append(Sample(t, SOURCE, "limit_bytes", self._limit, target=self.target))
        return ProbeResult(self.name, self.target, t, True, time.monotonic() - started,
                           samples=tuple(samples), detail={"pid": pid, "rss_bytes": rss,
                                                           "pss_bytes": pss})


class CgroupMemoryProbe:
    """``memory.current`` and ``memory.max`` of a cgroup v2 directory."""

    def __init__(self, target: str, cgroup: Path, clock: Clock | None = None) -> None:
        self.name = f"memory:{target}"
        self.target = target
        self._cgroup = cgroup
        self._clock = clock or SystemClock()

    async def run(self) -> ProbeResult:
        t, started = self._clock.now(), time.monotonic()
        try:
            current = int((self._cgroup / "memory.current").read_text())
            raw_max = (self._cgroup / "memory.max").read_text().strip()
        except (OSError, ValueError) as exc:
            return ProbeResult(self.name, self.target, t, False, time.monotonic() - started,
                               error=f"cannot read cgroup memory: {exc}")
        samples = [Sample(t, SOURCE, "cgroup_current_bytes", current, target=self.target)]
        limit = None if raw_max == "max" else int(raw_max)
        if limit is not None:
            samples.append(Sample(t, SOURCE, "limit_bytes", limit, target=self.target))
        return ProbeResult(self.name, self.target, t, True, time.monotonic() - started,
                           samples=tuple(samples),
                           detail={"current_bytes": current, "max_bytes": limit})
