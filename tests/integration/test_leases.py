"""Leases on a real PostgreSQL (daemon.leases over daemon.pgstate.PostgresLeases), replicas in
one process: units spread evenly and a newcomer takes a share, a dead replica's units are taken
over after the TTL with larger tokens, a stale token is refused inside the transaction that
would journal with it, a busy unit is not given up, and one intent never gets two outcomes.
The same with real daemon processes: tests/e2e/test_replicas.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest

from tfwarden.core.errors import LeaseLost, StateError
from tfwarden.daemon.leases import LeaseKeeper
from tfwarden.daemon.pgstate import PostgresLeases, PostgresStateStore

UNITS = [f"serving/e{i}" for i in range(6)]


def keeper(store: PostgresStateStore, name: str, ttl: float = 30.0,
           busy: Any = lambda unit: False) -> LeaseKeeper:
    return LeaseKeeper(PostgresLeases(store), name, f"http://{name}", ttl, busy=busy)


def rounds(keepers: list[LeaseKeeper], n: int = 3) -> list[set[str]]:
    for _ in range(n):
        for k in keepers:
            k.refresh(UNITS)
    return [k.owned(UNITS) for k in keepers]


@pytest.fixture
def store(postgres: Any) -> Any:
    opened = PostgresStateStore(postgres.new_database())
    yield opened
    opened.close()


def test_units_spread_evenly_and_a_new_replica_takes_a_share(store: Any) -> None:
    a = keeper(store, "a")
    assert rounds([a], 1) == [set(UNITS)]  # alone: everything
    b = keeper(store, "b")
    held = rounds([a, b])
    assert [len(h) for h in held] == [3, 3] and held[0].isdisjoint(held[1])
    c = keeper(store, "c")
    held = rounds([a, b, c])
    assert [len(h) for h in held] == [2, 2, 2]
    assert set().union(*held) == set(UNITS)
    assert all(a.may_act(u) for u in held[0]) and not any(a.may_act(u) for u in held[1])


def test_a_dead_replicas_units_are_taken_over_after_the_ttl_with_larger_tokens(
        store: Any) -> None:
    a, b = keeper(store, "a", ttl=1.0), keeper(store, "b", ttl=1.0)
    first = rounds([a, b])
    tokens = {lease["unit"]: lease["token"] for lease in PostgresLeases(store).owners()}
    started = time.monotonic()
    while b.owned(UNITS) != set(UNITS):  # a stops renewing: it died
        b.refresh(UNITS)
        assert time.monotonic() - started < 5, "a's units were not taken over"
        time.sleep(0.1)
    waited = time.monotonic() - started
    assert 0.5 < waited < 2.5  # about the TTL (1 s) after a's last renewal
    after = {lease["unit"]: lease["token"] for lease in PostgresLeases(store).owners()}
    assert all(after[u] > tokens[u] for u in first[0])  # a new owner, a larger token
    unit = sorted(first[0])[0]
    with pytest.raises(LeaseLost, match="fenced off: replica 'b' holds it"):
        a.check(unit)  # a wakes up believing it owns the unit: the database says no
    assert not a.may_act(unit) and unit not in a.tokens()  # the daemon drops what it built
    a.refresh(UNITS)
    assert a.owned(UNITS) == set()  # and it learns it: b holds all six, a is below its share
    rounds([a, b])
    assert len(a.owned(UNITS)) == 3  # b gives a share back


def test_a_stale_token_is_refused_inside_the_transaction_that_would_journal(store: Any) -> None:
    a = keeper(store, "a", ttl=30.0)
    a.refresh(UNITS)
    with store.transaction():
        a.check(UNITS[0])
        store.append(1.0, "action_intent", {"action": "promote"}, model="m")
    with psycopg.connect(_dsn(store), autocommit=True) as conn:  # an operator takes it over
        conn.execute("UPDATE leases SET owner = 'b', token = nextval('lease_token') "
                     "WHERE unit = %s", (UNITS[0],))
    with pytest.raises(LeaseLost), store.transaction():
        a.check(UNITS[0])
        store.append(2.0, "action_intent", {"action": "rollback"}, model="m")
    assert [e.payload["action"] for e in store.entries(kind="action_intent")] == ["promote"]
    with psycopg.connect(_dsn(store), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.RaiseException, match="never moves down"):
        conn.execute("UPDATE leases SET token = 1 WHERE unit = %s", (UNITS[0],))


def test_a_claim_skips_a_unit_whose_owner_is_writing_an_intent(store: Any) -> None:
    """The check locks the lease row FOR SHARE to the end of the intent's transaction: a
    replica taking units over (this lease just expired) skips that one (SKIP LOCKED) instead
    of slipping in between the check and the intent it guards, and takes it afterwards."""
    a = keeper(store, "a", ttl=0.5)
    a.refresh(UNITS)
    other = PostgresStateStore(_dsn(store))
    b = keeper(other, "b", ttl=30.0)
    with store.transaction():
        a.check(UNITS[0])
        time.sleep(0.6)  # every lease of a expires while the intent is being written
        thread = threading.Thread(target=b.refresh, args=(UNITS,))
        thread.start()
        thread.join(10)
        assert b.owned(UNITS) == set(UNITS[1:])  # all but the one being written under
        store.append(1.0, "action_intent", {"action": "promote"}, model="m")
    b.refresh(UNITS)
    assert b.owned(UNITS) == set(UNITS)
    other.close()


def test_a_unit_lost_and_taken_again_in_one_round_has_a_new_token(store: Any) -> None:
    """What the pipeline built under the old token is stale (the daemon rebuilds it, so that
    the pending intent of the replica that held the unit meanwhile is completed)."""
    a = keeper(store, "a", ttl=0.5)
    a.refresh(UNITS)
    before = a.tokens()
    time.sleep(0.6)
    b = keeper(store, "b", ttl=30.0)
    b.refresh(UNITS)  # a looked dead: b took everything, then stopped cleanly
    b.leave()
    a.refresh(UNITS)  # a's renewals fail, its claims succeed
    after = a.tokens()
    assert set(after) == set(before) == set(UNITS)
    assert all(after[u] > before[u] for u in UNITS)


def test_a_busy_unit_is_not_given_up(store: Any) -> None:
    a = keeper(store, "a", busy=lambda unit: True)
    a.refresh(UNITS)
    b = keeper(store, "b")
    rounds([a, b])
    assert a.owned(UNITS) == set(UNITS) and b.owned(UNITS) == set()


def test_a_lease_expired_while_nobody_claimed_it_renews_with_the_same_token(store: Any) -> None:
    a = keeper(store, "a", ttl=0.3)
    a.refresh(UNITS)
    before = {lease["unit"]: lease["token"] for lease in PostgresLeases(store).owners()}
    time.sleep(0.5)  # the database was away, say: nobody else came
    assert not a.may_act(UNITS[0])
    a.refresh(UNITS)
    assert a.owned(UNITS) == set(UNITS) and a.may_act(UNITS[0])
    assert {lease["unit"]: lease["token"] for lease in PostgresLeases(store).owners()} == before


def test_a_clean_stop_frees_the_units_at_once(store: Any) -> None:
    a, b = keeper(store, "a"), keeper(store, "b")
    rounds([a, b])
    a.leave()
    b.refresh(UNITS)
    assert b.owned(UNITS) == set(UNITS)


def test_one_intent_never_gets_two_outcomes(store: Any) -> None:
    intent = store.append(1.0, "action_intent", {"action": "promote"}, model="m")
    store.append(2.0, "action_done", {"intent_id": intent}, model="m")
    with pytest.raises(StateError, match="journal_one_outcome"):
        store.append(3.0, "action_failed", {"intent_id": intent}, model="m")
    assert [e.kind for e in store.entries()] == ["action_intent", "action_done"]


def _dsn(store: PostgresStateStore) -> str:
    return str(store._pool.conninfo)
