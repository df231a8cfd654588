"""Who acts on what: units of ownership, and the leases replicas hold on them.

A unit is what exactly one writer must own:
- ``serving/<endpoint>``: a serving endpoint's model config file, with every model on it (the
  probes, detectors and lifecycle of those models, and their nginx includes);
- ``edge/<model>``: an edge model's staged rollout.

One daemon on SQLite owns every unit (:class:`SoleOwner`). Replicas sharing PostgreSQL hold
leases (:class:`LeaseKeeper` over ``daemon.pgstate.PostgresLeases``): a TTL on the database's
clock and a fencing token that grows at every change of owner. Every action checks its token in
the transaction that journals its intent, again before it touches the server, and in the one
that journals its outcome; a replica whose token is stale (it was paused past its TTL, or the
database was away and another replica took over) is refused there, whatever it believes.

Units are spread evenly: a replica claims free units up to ``ceil(units / live replicas)`` and
gives one up while it holds more than another live replica's fair share allows, so a new replica
takes a share and a dead one's units (its leases expire, nobody renews them) are claimed by the
others within the TTL.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from tfwarden.core.errors import LeaseLost, StateError

if TYPE_CHECKING:
    from tfwarden.daemon.config import Config
    from tfwarden.daemon.pgstate import PostgresLeases

log = logging.getLogger("tfwarden.leases")


class LeaseMetrics(Protocol):
    def leases(self, held: dict[str, bool], failed: bool) -> None: ...


def serving_unit(endpoint: str) -> str:
    return f"serving/{endpoint}"


def edge_unit(model: str) -> str:
    return f"edge/{model}"


def units_of(config: Config) -> list[str]:
    """Every unit the configuration names: endpoints with models, edge models with rollouts."""
    return sorted({serving_unit(m.serving) for m in config.models}
                  | {edge_unit(m.name) for m in config.edge.models if m.rollout is not None})


def owned_config(config: Config, owned: set[str]) -> Config:
    """The part of ``config`` this replica runs: the models of the endpoints it owns (probes,
    detectors, drift, lifecycle). Endpoints, memory targets (this host's processes), PromQL
    queries and edge models stay whole: the edge rollout runner asks the fence per model."""
    return config.model_copy(update={
        "models": [m for m in config.models if serving_unit(m.serving) in owned]})


def replica_name(config: Config) -> str:
    return config.state.replica_name or socket.gethostname()


def replica_url(config: Config) -> str:
    """Where this replica's API is reached from elsewhere (``state.replica_url``, else
    ``server.listen`` with a wildcard host replaced by the address of this host's name)."""
    if config.state.replica_url is not None:
        return str(config.state.replica_url).rstrip("/")
    host, port = config.server.host, config.server.port
    if host in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = socket.gethostname()
    host = f"[{host}]" if ":" in host else host
    return f"{'https' if config.server.tls else 'http'}://{host}:{port}"


class SoleOwner:
    """One daemon alone (SQLite): it owns every unit, nobody can take one away."""

    kind = "sole"

    def may_act(self, unit: str) -> bool:
        return True

    def check(self, unit: str) -> None:
        return None

    def owned(self, units: Sequence[str]) -> set[str]:
        return set(units)

    def refresh(self, units: Sequence[str]) -> None:
        return None

    def tokens(self) -> dict[str, int]:
        return {}

    def leave(self) -> None:
        return None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "replica": None, "confirmed": True, "units": []}


class LeaseKeeper:
    """This replica's leases: claimed, renewed and given up by ``refresh`` (every TTL / 3, in
    a thread: it waits on the database), checked by ``check`` (on the event loop, inside the
    store transaction of the action that needs it)."""

    kind = "postgres-leases"

    def __init__(self, table: PostgresLeases, replica: str, url: str, ttl_seconds: float,
                 busy: Callable[[str], bool] = lambda unit: False,
                 metrics: LeaseMetrics | None = None) -> None:
        self.table, self.replica, self.url, self.ttl = table, replica, url, ttl_seconds
        self.busy, self.metrics = busy, metrics
        self._held: dict[str, int] = {}  # unit -> fencing token
        self._lock = threading.Lock()
        self._round_lock = threading.Lock()  # one round at a time; none after ``leave``
        self._left = False
        self._confirmed_until = 0.0  # boot clock: every held lease renewed until then
        self._last_error: str | None = None
        self._owners: list[dict[str, Any]] = []
        self._live: list[str] = []

    # -- Fence -----------------------------------------------------------------------------
    def may_act(self, unit: str) -> bool:
        with self._lock:
            return unit in self._held and _clock() < self._confirmed_until

    def check(self, unit: str) -> None:
        with self._lock:
            token = self._held.get(unit)
        if token is None:
            raise LeaseLost(f"unit {unit!r}: replica {self.replica!r} does not hold its lease")
        try:
            self.table.check(unit, self.replica, token)
        except LeaseLost:
            with self._lock:
                if self._held.get(unit) == token:
                    del self._held[unit]
            raise

    # -- claiming, renewing, giving up -----------------------------------------------------
    def owned(self, units: Sequence[str]) -> set[str]:
        with self._lock:
            return {u for u in units if u in self._held}

    def tokens(self) -> dict[str, int]:
        """unit -> fencing token of every lease held now (a unit lost and taken again between
        two looks has a new token: what was built for the old one is stale)."""
        with self._lock:
            return dict(self._held)

    def refresh(self, units: Sequence[str]) -> None:
        """One round (``_round``), then the metrics: which units this replica may act on."""
        with self._round_lock:
            if self._left:
                return
            failed = self._round(units)
        if self.metrics is not None:
            self.metrics.leases({unit: self.may_act(unit) for unit in units}, failed)

    def _round(self, units: Sequence[str]) -> bool:
        """One round against the database; True when it could not be reached. Then nothing
        changes here: the leases stay held until their TTL passes unconfirmed (``may_act`` is
        then False everywhere), and renew if nobody claimed them meanwhile."""
        started = _clock()
        with self._lock:
            before = dict(self._held)
        held = dict(before)
        try:
            live = self.table.heartbeat(self.replica, self.url, self.ttl)
            self.table.register(units)
            renewed = self.table.renew(self.replica, held, self.ttl)
            lost = [u for u in held if u not in renewed]
            if lost:
                self._say_lost(lost)
            for unit in lost:
                del held[unit]
            gone = {u: t for u, t in held.items() if u not in units}
            if gone:
                self.table.release(self.replica, gone)
                held = {u: t for u, t in held.items() if u in units}
            owners = self.table.owners()
            claimed, given_up = self._rebalance(units, held, live, owners)
            if claimed or given_up:
                owners = self.table.owners()
        except StateError as exc:
            with self._lock:
                self._last_error = str(exc)
                self._held = {u: t for u, t in self._held.items() if held.get(u) == t}
            log.error("leases not renewed: %s", exc)
            return True
        with self._lock:  # what the database confirmed, whatever ``check`` saw meanwhile
            self._held = held
            self._confirmed_until = started + self.ttl
            self._last_error, self._owners, self._live = None, owners, live
        for unit, token in sorted(claimed.items()):
            log.info("lease of %s taken (token %d)", unit, token)
        for unit in given_up:
            log.info("lease of %s given up to balance %d replica(s)", unit, len(live))
        return False

    def _say_lost(self, units: list[str]) -> None:
        owners = {lease["unit"]: lease for lease in self.table.owners()}
        for unit in units:
            owner = owners.get(unit, {}).get("owner")
            if owner == self.replica:
                log.error("lease of %s taken by another process named %r: give every replica "
                          "its own state.replica_name", unit, self.replica)
            else:
                log.warning("lease of %s lost (now %s)", unit,
                            f"held by {owner!r}" if owner else "free")

    def _rebalance(self, units: Sequence[str], held: dict[str, int], live: list[str],
                   owners: list[dict[str, Any]]) -> tuple[dict[str, int], list[str]]:
        """Claim free units up to the fair share, or give one up to a replica below it."""
        replicas = max(1, len(live))
        most, least = math.ceil(len(units) / replicas), len(units) // replicas
        counts = {name: 0 for name in live}
        for lease in owners:
            if lease["owner"] in counts and lease["expires_in_seconds"] > 0 \
                    and lease["unit"] in units:
                counts[lease["owner"]] += 1
        if len(held) < most:
            claimed = self.table.claim(self.replica, [u for u in units if u not in held],
                                       most - len(held), self.ttl)
            held.update(claimed)
            return claimed, []
        starved = any(n < least for name, n in counts.items() if name != self.replica)
        if len(held) > most or (len(held) > least and starved):
            spare = [u for u in sorted(held, reverse=True) if not self.busy(u)]
            excess = max(1, len(held) - most)
            give = {u: held[u] for u in spare[:excess]}
            if give:
                with self._lock:  # stop acting before the database says it is free
                    for unit in give:
                        self._held.pop(unit, None)
                self.table.release(self.replica, give)
                for unit in give:
                    del held[unit]
            return {}, list(give)
        return {}, []

    def leave(self) -> None:
        """A clean stop: every lease free at once, for the other replicas to take (after the
        round in progress, if any; none starts after)."""
        with self._round_lock:
            self._left = True
        with self._lock:
            held, self._held = dict(self._held), {}
        try:
            self.table.leave(self.replica, held)
        except StateError as exc:
            log.warning("leases not given back (they expire in %.0fs): %s", self.ttl, exc)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            confirmed = _clock() < self._confirmed_until
            units = []
            for lease in self._owners:
                mine = lease["unit"] in self._held
                owner = lease["owner"] if lease["expires_in_seconds"] > 0 else None
                units.append({**lease, "owner": owner, "mine": mine,
                              "state": ("held" if confirmed else "inconclusive") if mine
                              else ("other" if owner else "free")})
            return {"kind": self.kind, "replica": self.replica, "url": self.url,
                    "ttl_seconds": self.ttl, "confirmed": confirmed,
                    "live_replicas": list(self._live), "last_error": self._last_error,
                    "held": sorted(self._held), "units": units}

    def owner_of(self, unit: str) -> dict[str, Any] | None:
        """The last known owner of ``unit`` (its name and URL) when it is not this replica."""
        with self._lock:
            for lease in self._owners:
                if lease["unit"] == unit and lease["owner"] != self.replica \
                        and lease["expires_in_seconds"] > 0:
                    return lease
        return None


def _clock() -> float:
    """Seconds on a clock that goes on while the host is suspended (a lease expires then too)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)

