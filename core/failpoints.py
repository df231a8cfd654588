"""Failpoints: named steps inside actions where the chaos suite (``tests/chaos``) makes the real
daemon fail, the way etcd's and TiKV's failpoints do. Off unless ``TFWARDEN_FAILPOINTS`` is set
in the daemon's environment (then a warning is logged at start); a step costs one dict lookup.

``TFWARDEN_FAILPOINTS="promote.after_server=kill"``: comma-separated ``STEP=FAULT[@N]``, fired
at the N-th time the step is reached (default the first), once. Faults:

- ``kill``: SIGKILL to this process (a crash, nothing flushed);
- ``term``: SIGTERM to this process (a stop), then the step goes on until it is cancelled;
- ``hup``: SIGHUP (a reload), then the step goes on;
- ``stop``: SIGSTOP to this process (a pause: a VM migration, a stalled host), which goes on
  from the step when a SIGCONT comes (replicas: the lease may have passed to another);
- ``fill``: the state directory's filesystem is filled up (a small tmpfs only), then the step
  goes on into a full disk;
- ``fsize``: files this process writes can no longer grow (``RLIMIT_FSIZE`` 0: EFBIG, the
  file-layer stand-in for a full disk where no small filesystem can be mounted).

Steps: ``<action>.after_intent`` (journaled and pending, nothing moved), ``<action>.after_router``,
``<action>.after_server``, ``<action>.before_outcome`` (everything moved, no outcome yet), for
the actions of ``lifecycle.actions`` and ``reoptimize``; ``edge_<action>.after_intent`` and
``edge_<action>.before_outcome`` for the edge rollout actions of ``lifecycle.edge``.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
from pathlib import Path

from tfwarden.core.errors import StartupError

log = logging.getLogger("tfwarden.failpoints")
ENV = "TFWARDEN_FAILPOINTS"
FAULTS = ("kill", "term", "hup", "stop", "fill", "fsize")
MAX_FILL_BYTES = 64 * 1024 * 1024  # never fill a real disk: only a small test filesystem


class _Armed:
    def __init__(self, spec: str) -> None:
        self.faults: dict[str, tuple[str, int]] = {}
        self.hits: dict[str, int] = {}
        self.state_dir: Path | None = None
        for item in filter(None, (part.strip() for part in spec.split(","))):
            step, _, fault = item.partition("=")
            fault, _, nth = fault.partition("@")
            if fault not in FAULTS or not step:
                raise StartupError(f"{ENV}: {item!r} is not STEP=FAULT[@N] with FAULT one of "
                                 f"{', '.join(FAULTS)}")
            if not (nth or "1").isdigit():
                raise StartupError(f"{ENV}: {item!r}: @N must be a number")
            self.faults[step] = (fault, int(nth or 1))


_armed: _Armed | None = None


def arm(state_dir: Path) -> None:
    """Read ``TFWARDEN_FAILPOINTS`` (the daemon calls this once at start)."""
    global _armed
    spec = os.environ.get(ENV, "")
    _armed = _Armed(spec) if spec else None
    if _armed is not None:
        _armed.state_dir = state_dir
        log.warning("failpoints armed (tests only): %s", spec)


def reached(step: str) -> None:
    """The daemon reached ``step``; fire its fault if one is armed for this time."""
    if _armed is None or step not in _armed.faults:
        return
    fault, nth = _armed.faults[step]
    _armed.hits[step] = hits = _armed.hits.get(step, 0) + 1
    if hits != nth:
        return
    log.warning("failpoint %s: %s", step, fault)
    if fault == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif fault == "hup":
        os.kill(os.getpid(), signal.SIGHUP)
    elif fault == "stop":
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGSTOP)
    elif fault == "fill":
        _fill(_armed.state_dir)
    elif fault == "fsize":
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def _fill(state_dir: Path | None) -> None:
    if state_dir is None:
        return
    stats = os.statvfs(state_dir)
    if stats.f_blocks * stats.f_frsize > MAX_FILL_BYTES:
        log.error("failpoint fill refused: %s is not on a small test filesystem", state_dir)
        return
    with open(state_dir / "failpoint-fill", "ab", buffering=0) as filler:
        for chunk in (1 << 16, 1 << 12, 1 << 9):  # to the last free block
            try:
                while True:
                    filler.write(b"\0" * chunk)
            except OSError:
                continue
