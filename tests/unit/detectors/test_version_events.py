"""The server's version reports become load/unload events for the memory detectors."""

from __future__ import annotations

from tfwarden.core.types import VersionState
from tfwarden.detectors.roles import RoleTracker, VersionEvents


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple[str | None, str, int, str, float]] = []

    def version_event(self, target: str | None, model: str, version: int, state: str,
                      t: float) -> None:
        self.events.append((target, model, version, state, t))


def states(**versions: str) -> list[VersionState]:
    return [VersionState(int(v[1:]), s) for v, s in versions.items()]


def test_loads_and_unloads_are_told_after_the_first_report_and_roles_still_follow() -> None:
    listener, roles, clock = Listener(), RoleTracker(), [100.0]
    events = VersionEvents(listener, roles, lambda: clock[0])
    events.versions_seen("m", states(v1="AVAILABLE"), None)
    assert listener.events == []  # the first report is the baseline
    assert roles.roles("m") == (1, None)
    clock[0] = 110.0
    events.versions_seen("m", states(v1="AVAILABLE", v2="LOADING"), None)
    assert listener.events == []  # not available yet
    clock[0] = 120.0
    events.versions_seen("m", states(v1="AVAILABLE", v2="AVAILABLE"), None)
    assert listener.events == [(None, "m", 2, "loaded", 120.0)]
    assert roles.roles("m") == (1, 2)
    clock[0] = 130.0
    events.versions_seen("m", states(v1="UNLOADING", v2="AVAILABLE"), None)
    assert listener.events[-1] == (None, "m", 1, "unloaded", 130.0)
    events.versions_seen("m", states(v2="AVAILABLE"), None)  # gone: no second event
    assert len(listener.events) == 2
    events.versions_seen("other", states(v7="AVAILABLE"), None)
    assert len(listener.events) == 2 and roles.roles("other") == (7, None)


def test_a_restarting_server_is_not_a_round_of_unloads_and_loads() -> None:
    listener, roles = Listener(), RoleTracker()
    events = VersionEvents(listener, roles, lambda: 5.0)
    events.versions_seen("m", states(v1="AVAILABLE", v2="AVAILABLE"), None)
    events.versions_seen("m", states(v1="LOADING", v2="START"), None)  # restarting
    events.versions_seen("m", states(v1="AVAILABLE", v2="AVAILABLE"), None)
    assert listener.events == []
