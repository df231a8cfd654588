"""Who is stable and who is the canary, per model: one tracker for the daemon, backtest, replay.

Three sources, in order of authority:

1. the lifecycle status (``status_changed``): for a model tfwarden manages, the roles change the
   moment an action completes (no wait for the next status poll);
2. a backtest trace's deploy events (``deployed``);
3. the server (``versions_seen``), for models tfwarden does not manage: the ``stable`` and
   ``canary`` labels of the model config file when it is readable; otherwise, with two
   AVAILABLE versions, the lower is stable and the higher (the one unlabeled requests reach)
   the canary.

Each change is passed on to the subscribed listeners (the detector roster).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from tfwarden.core.status import ModelStatus
from tfwarden.core.types import RolePair, VersionState

log = logging.getLogger("tfwarden.detection")
Pair = RolePair


class RoleListener(Protocol):
    def roles_changed(self, model: str, previous: Pair, current: Pair) -> None: ...


class RoleTracker:
    def __init__(self) -> None:
        self._roles: dict[str, Pair] = {}
        self._managed: set[str] = set()
        self._listeners: list[RoleListener] = []

    def subscribe(self, listener: RoleListener) -> None:
        self._listeners.append(listener)

    def roles(self, model: str) -> Pair:
        return self._roles.get(model, (None, None))

    def all(self) -> dict[str, Pair]:
        return dict(self._roles)

    # -- the sources -------------------------------------------------------------------------
    def status_changed(self, status: ModelStatus) -> None:
        """A lifecycle status (authoritative once it names a stable version)."""
        if status.stable_version is None:
            return
        self._managed.add(status.model)
        self._set(status.model, (status.stable_version, status.canary_version))

    def versions_seen(self, model: str, versions: Sequence[VersionState],
                      labels: Mapping[str, int] | None) -> None:
        """What the server reports (ignored for models whose lifecycle status is known)."""
        if model in self._managed:
            return
        available = sorted(v.version for v in versions if v.available)
        stable = canary = None
        if labels and labels.get("stable") in available:
            stable = labels["stable"]
            if labels.get("canary") in available and labels["canary"] != stable:
                canary = labels["canary"]
        elif available:
            stable = available[0]
            canary = available[-1] if len(available) > 1 else None
        self._set(model, (stable, canary))

    def deployed(self, model: str, version: int, role: str) -> None:
        """A deploy event: a canary beside the current stable, or a new stable."""
        stable, _ = self.roles(model)
        if role == "canary":
            if stable is not None and stable != version:
                self._set(model, (stable, version))
            return
        self._set(model, (version, None))

    def forget(self, model: str) -> None:
        self._roles.pop(model, None)
        self._managed.discard(model)

    def _set(self, model: str, current: Pair) -> None:
        previous = self.roles(model)
        if previous == current:
            return
        self._roles[model] = current
        log.info("model %s: stable version %s, canary %s", model, *current)
        for listener in self._listeners:
            listener.roles_changed(model, previous, current)


class VersionEventListener(Protocol):
    def version_event(self, target: str | None, model: str, version: int, state: str,
                      t: float) -> object: ...


class VersionEvents:
    """Turns what the server reports into version ``loaded`` / ``unloaded`` events for the
    memory detectors (an RSS step at a load or unload is not a leak; memory kept after an unload
    is retention), then passes the report on to ``then`` (the role tracker).

    The first report of a model is the baseline (no events); a report with no version available
    (a restarting server) changes nothing. The server does not say which
    process or cgroup holds a model, so events go to every memory target (``target`` None).
    """

    def __init__(self, listener: VersionEventListener, then: RoleTracker,
                 now: Callable[[], float]) -> None:
        self.listener, self.then, self.now = listener, then, now
        self._available: dict[str, set[int]] = {}

    def versions_seen(self, model: str, versions: Sequence[VersionState],
                      labels: Mapping[str, int] | None) -> None:
        available = {v.version for v in versions if v.available}
        before = self._available.get(model)
        if before and not available:
            # every version gone at once is a server restart or outage, not unloads (its
            # memory comes back with the versions): keep the last set as the baseline
            self.then.versions_seen(model, versions, labels)
            return
        self._available[model] = available
        if before is not None and available != before:
            t = self.now()
            for version in sorted(available - before):
                self.listener.version_event(None, model, version, "loaded", t)
            for version in sorted(before - available):
                self.listener.version_event(None, model, version, "unloaded", t)
        self.then.versions_seen(model, versions, labels)
