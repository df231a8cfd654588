"""The StateStore contract (``core.ports.StateStore``), run over SQLite, PostgreSQL (a real
server, tests/postgres.py) and the in-memory fake."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import MemoryStateStore
from tfwarden.core.ports import StateStore
from tfwarden.daemon.state import SQLiteStateStore


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], StateStore]:
    """Opens a new store of the implementation under test (each call: the same database)."""
    if request.param == "sqlite":
        return lambda: SQLiteStateStore(tmp_path / "state")
    if request.param == "postgres":
        from tfwarden.daemon.pgstate import PostgresStateStore

        dsn = request.getfixturevalue("postgres").new_database()
        return lambda: PostgresStateStore(dsn)
    return MemoryStateStore


@pytest.fixture
def store(open_store: Callable[[], StateStore]) -> Iterator[StateStore]:
    opened = open_store()
    yield opened
    opened.close()


def test_journal_appends_in_order_and_filters(store: StateStore) -> None:
    a = store.append(1.0, "config_loaded", {"generation": 1})
    b = store.append(2.0, "decision", {"action": "hold"}, model="m")
    c = store.append(3.0, "decision", {"action": "rollback"}, model="other")
    assert a < b < c
    assert [e.id for e in store.entries()] == [a, b, c]
    assert [e.payload["action"] for e in store.entries(kind="decision")] == ["hold", "rollback"]
    assert [e.id for e in store.entries(model="m")] == [b]
    assert [e.id for e in store.entries(after_id=a, limit=1)] == [b]
    assert store.entries()[1].t == 2.0
    assert [e.id for e in store.entries(limit=2, newest_first=True)] == [c, b]
    assert [e.id for e in store.entries(kind="decision", newest_first=True)] == [c, b]
    assert [e.id for e in store.entries(after_id=b, newest_first=True)] == [c]


def test_append_returns_strictly_increasing_ids_that_entries_report(store: StateStore) -> None:
    ids = [store.append(float(i), "tick", {"i": i}) for i in range(5)]
    assert ids == sorted(set(ids)) and len(ids) == 5
    entries = store.entries()
    assert [e.id for e in entries] == ids
    assert [e.payload for e in entries] == [{"i": i} for i in range(5)]
    assert [e.t for e in entries] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_an_entry_keeps_time_kind_model_and_payload(store: StateStore) -> None:
    payload = {"action": "rollback", "to": 3, "reasons": ["p99", "errors"], "dry_run": False,
               "note": "modèle ✓ 日本", "score": 0.25, "nothing": None}
    entry_id = store.append(1_764_000_000.125, "decision", payload, model="resnet")
    (entry,) = store.entries()
    assert (entry.id, entry.t, entry.kind, entry.model) == (entry_id, 1_764_000_000.125, "decision",
                                                            "resnet")
    assert entry.payload == payload
    assert store.append(2.0, "daemon_started", {}) > entry_id
    assert store.entries(after_id=entry_id)[0].model is None


def test_entries_filter_by_kind_and_model_together_in_id_order(store: StateStore) -> None:
    rows = [("decision", "a"), ("finding", "a"), ("decision", "b"), ("decision", "a"),
            ("decision", None), ("finding", "b"), ("decision", "a")]
    ids = [store.append(float(i), kind, {"n": i}, model=model)
           for i, (kind, model) in enumerate(rows)]
    assert [e.id for e in store.entries(kind="decision", model="a")] == [ids[0], ids[3], ids[6]]
    assert [e.id for e in store.entries(kind="finding")] == [ids[1], ids[5]]
    assert [e.id for e in store.entries(model="b")] == [ids[2], ids[5]]
    assert [e.id for e in store.entries(kind="decision", model="a", after_id=ids[0])] == \
        [ids[3], ids[6]]
    assert [e.id for e in store.entries(kind="decision", model="a", limit=2)] == [ids[0], ids[3]]
    assert store.entries(kind="absent") == []
    assert store.entries(model="absent") == []


def test_entries_page_with_after_id_and_limit(store: StateStore) -> None:
    ids = [store.append(float(i), "tick", {"i": i}) for i in range(7)]
    pages: list[list[int]] = []
    after = 0
    while page := store.entries(after_id=after, limit=3):
        pages.append([e.id for e in page])
        after = page[-1].id
    assert pages == [ids[0:3], ids[3:6], ids[6:7]]
    assert store.entries(after_id=ids[-1]) == []
    assert len(store.entries(limit=100)) == 7


def test_payloads_are_copies(store: StateStore) -> None:
    payload: dict[str, Any] = {"versions": [1, 2], "labels": {"stable": 1}}
    store.append(1.0, "decision", payload, model="m")
    payload["versions"].append(3)
    payload["labels"]["canary"] = 2
    payload["added"] = True
    assert store.entries()[0].payload == {"versions": [1, 2], "labels": {"stable": 1}}


def test_key_value_round_trip(store: StateStore) -> None:
    assert store.get("lifecycle/m") is None
    store.put("lifecycle/m", {"phase": "stable", "versions": [1, 2]}, 1.0)
    store.put("lifecycle/m", {"phase": "canary_live", "versions": [1, 2]}, 2.0)
    assert store.get("lifecycle/m") == {"phase": "canary_live", "versions": [1, 2]}


@pytest.mark.parametrize("value", [
    {"phase": "canary_live", "weight": 25, "history": [{"t": 1.5, "ok": True}]},
    [1, 2.5, "three", None, False, [4]],
    "modèle ✓ 日本 🚀",
    {"ключ": "値", "emoji": "🧪"},
    0,
    -1.25,
    True,
    [],
    {},
], ids=["dict", "list", "unicode-str", "unicode-dict", "zero", "float", "bool", "empty-list",
        "empty-dict"])
def test_json_values_round_trip(store: StateStore, value: Any) -> None:
    store.put("k", value, 1.0)
    got = store.get("k")
    assert got == value and type(got) is type(value)


def test_json_turns_tuples_into_lists_and_keys_into_strings(store: StateStore) -> None:
    store.put("k", {"pair": (1, 2), "by_version": {"7": "AVAILABLE"}}, 1.0)
    assert store.get("k") == {"pair": [1, 2], "by_version": {"7": "AVAILABLE"}}


def test_none_overwrites_a_value(store: StateStore) -> None:
    store.put("k", {"phase": "stable"}, 1.0)
    store.put("k", None, 2.0)
    assert store.get("k") is None
    store.put("k", [1], 3.0)
    assert store.get("k") == [1]


def test_put_new_keeps_the_first_value(store: StateStore) -> None:
    assert store.put_new("edge/device_key", "first", 1.0) == "first"
    assert store.put_new("edge/device_key", "second", 2.0) == "first"
    assert store.get("edge/device_key") == "first"
    store.put("k", None, 1.0)  # a key set to None holds nothing
    assert store.put_new("k", {"v": 1}, 2.0) == {"v": 1}


def test_keys_are_independent_and_unicode(store: StateStore) -> None:
    store.put("lifecycle/résnet", 1, 1.0)
    store.put("lifecycle/resnet", 2, 1.0)
    store.put("モデル", {"v": 3}, 1.0)
    assert [store.get(k) for k in ("lifecycle/résnet", "lifecycle/resnet", "モデル")] == \
        [1, 2, {"v": 3}]
    assert store.get("lifecycle/") is None
    assert store.get("") is None


def test_values_are_copies(store: StateStore) -> None:
    value: dict[str, Any] = {"versions": [1, 2]}
    store.put("k", value, 1.0)
    value["versions"].append(3)
    assert store.get("k") == {"versions": [1, 2]}
    got = store.get("k")
    got["versions"].append(4)
    assert store.get("k") == {"versions": [1, 2]}


def test_journal_and_key_values_do_not_mix(store: StateStore) -> None:
    store.put("decision", {"x": 1}, 1.0)
    assert store.entries() == []
    store.append(1.0, "decision", {"x": 2})
    assert store.get("decision") == {"x": 1}


def test_checkpoint_keeps_everything(store: StateStore) -> None:
    entry_id = store.append(1.0, "daemon_started", {"pid": 7})
    store.put("k", "v", 1.0)
    store.checkpoint()
    store.checkpoint()
    assert [(e.id, e.payload) for e in store.entries()] == [(entry_id, {"pid": 7})]
    assert store.get("k") == "v"
    assert store.append(2.0, "tick", {}) > entry_id


def test_close_does_not_raise(open_store: Callable[[], StateStore]) -> None:
    opened = open_store()
    opened.append(1.0, "x", {})
    opened.put("k", 1, 1.0)
    opened.checkpoint()
    opened.close()


def test_a_transaction_commits_the_journal_and_values_together(store: StateStore) -> None:
    with store.transaction():
        entry_id = store.append(1.0, "action_intended", {"action": "rollback"}, model="m")
        store.put("pending", {"intent_id": entry_id}, 1.0)
    assert store.get("pending") == {"intent_id": entry_id}
    assert [e.id for e in store.entries()] == [entry_id]


def test_a_failed_transaction_keeps_neither_the_entry_nor_the_value(store: StateStore) -> None:
    store.put("pending", "before", 0.0)
    with pytest.raises(RuntimeError), store.transaction():
        store.append(1.0, "action_intended", {}, model="m")
        store.put("pending", "after", 1.0)
        raise RuntimeError("crash between the two writes")
    assert store.entries() == []
    assert store.get("pending") == "before"
    later = store.append(2.0, "daemon_started", {})
    assert [e.id for e in store.entries()] == [later]


def test_transactions_nest_and_the_outermost_decides(store: StateStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        with store.transaction():
            store.put("k", 1, 1.0)
        raise RuntimeError("outer fails")
    assert store.get("k") is None


def test_prune_drops_only_the_oldest_entries_by_age(store: StateStore) -> None:
    ids = [store.append(float(t), "tick", {"t": t}) for t in range(10)]
    assert store.prune(now=10.0, max_age_seconds=5.0, max_bytes=10**9) == 5
    assert [e.id for e in store.entries()] == ids[5:]
    assert store.prune(now=10.0, max_age_seconds=5.0, max_bytes=10**9) == 0
    assert store.append(11.0, "tick", {}) > ids[-1]  # ids are never reused


def test_prune_keeps_the_newest_entries_within_the_size(store: StateStore) -> None:
    ids = [store.append(float(t), "tick", {"pad": "x" * 900}) for t in range(10)]
    assert store.prune(now=10.0, max_age_seconds=10**9, max_bytes=3 * 1024) == 7
    assert [e.id for e in store.entries()] == ids[7:]


def test_prune_of_everything_old_leaves_an_empty_journal_that_grows_again(
        store: StateStore) -> None:
    for t in range(3):
        store.append(float(t), "tick", {})
    assert store.prune(now=1000.0, max_age_seconds=1.0, max_bytes=10**9) == 3
    assert store.entries() == []
    assert store.append(1001.0, "tick", {}) > 3
