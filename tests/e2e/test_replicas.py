"""Three tfwarden daemons on one PostgreSQL, one devserver: the replicas share the lease of the
endpoint's model config file (unit ``serving/dev``), and only its owner acts.

- kill -9 of the owner in the middle of a rollout: another replica holds the unit within the
  lease TTL, completes the action the dead one left pending, and the rollout goes on to the
  promotion; the journal shows one outcome per intent;
- SIGSTOP of the owner right after it journaled an intent, past its lease: another replica
  completes the intent; the stopped one, continued, is fenced off before it touches the server;
- PostgreSQL stopped: the replicas hold (no action, their leases ``inconclusive``) and resume
  when it is back.

Throughout, a watcher asserts that every request through the ``stable`` label is answered (no
label ever points at an unloaded version)."""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.e2e.test_canary_lifecycle import FAST_RULES, MODEL, new_version
from tests.helpers import DaemonProcess, DevServer, daemon_config, free_port
from tests.integration.test_controller import StableWatcher

pytestmark = pytest.mark.integration
LEASE_SECONDS = 3.0
UNIT = "serving/dev"


class Replicas:
    """The devserver, the shared files, and replicas r1..r3 (each in its own directory)."""

    def __init__(self, work: Path, dsn: str) -> None:
        self.work, self.dsn = work, dsn
        self.base = work / "models" / "m"
        shutil.copytree(MODEL, self.base / "1")
        self.model_config = work / "models.config"
        self.model_config.write_text(
            f'model_config_list {{ config {{ name: "m" base_path: "{self.base}" '
            'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } }')
        (work / "golden.jsonl").write_text(json.dumps(
            {"request": {"instances": [2.0]}, "expected": {"predictions": [3.0]}}) + "\n")
        (work / "rules.yaml").write_text(FAST_RULES)
        (work / "pg.dsn").write_text(dsn + "\n")
        self.dev = DevServer(f"--model_config_file={self.model_config}", workdir=work)
        self.daemons: dict[str, DaemonProcess] = {}
        self.watcher: StableWatcher | None = None

    def start(self, name: str, env: dict[str, str] | None = None) -> DaemonProcess:
        directory = self.work / name
        directory.mkdir(exist_ok=True)
        port = free_port()
        config = daemon_config(
            directory, port, self.dev, model_config_file=str(self.model_config),
            models=[{"name": "m", "golden_requests": str(self.work / "golden.jsonl"),
                     "probe": {"address": "labels", "labels": ["stable", "canary"],
                               "rate_per_second": 20, "timeout_seconds": 1},
                     "lifecycle": {"version_poll_seconds": 1, "keep_previous_seconds": 3600}}],
            policies={"ruleset": str(self.work / "rules.yaml")},
            state={"kind": "postgres", "dsn_file": str(self.work / "pg.dsn"),
                   "lease_seconds": LEASE_SECONDS, "replica_name": name})
        daemon = self.daemons[name] = DaemonProcess(config, port, env)
        daemon.wait_ready(30)
        return daemon

    def start_all(self, first_env: dict[str, str] | None = None) -> None:
        """r1 first, so that it takes the unit (one unit, three replicas: r1 keeps it)."""
        self.dev.wait_ready()
        self.start("r1", first_env)
        wait(lambda: self.owner() == "r1", 20, "r1 holds the unit")
        self.start("r2")
        self.start("r3")
        wait(lambda: self.model_of("r1").get("stable_version") == 1, 30, "adoption")
        self.watcher = StableWatcher(self.dev.grpc_address, pause=0.05)
        self.watcher.start()
        self.watcher.wait_served(1)

    def owner(self) -> str | None:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT owner FROM leases WHERE unit = %s AND expires_at > "
                               "EXTRACT(EPOCH FROM clock_timestamp())", (UNIT,)).fetchone()
        return row[0] if row else None

    def leases_of(self, name: str) -> dict[str, Any]:
        return self.daemons[name].client.get("/api/v1/status").json()["leases"]  # type: ignore[no-any-return]

    def model_of(self, name: str) -> dict[str, Any]:
        response = self.daemons[name].client.get("/api/v1/models/m")
        return response.json() if response.status_code == 200 else {}  # type: ignore[no-any-return]

    def journal(self) -> list[tuple[int, str, dict[str, Any]]]:
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute("SELECT id, kind, payload FROM journal WHERE kind LIKE 'action_%' "
                                "ORDER BY id").fetchall()
        return [(int(i), k, json.loads(p)) for i, k, p in rows]

    def actions(self) -> list[str]:
        return [p["action"] for _, k, p in self.journal() if k == "action_done"]

    def assert_one_outcome_per_intent(self) -> None:
        entries = self.journal()
        intents = [i for i, k, _ in entries if k == "action_intent"]
        outcomes = [p["intent_id"] for _, k, p in entries if k in ("action_done", "action_failed")]
        assert sorted(outcomes) == sorted(set(outcomes)), entries  # never two
        assert set(outcomes) <= set(intents), entries

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.stop.set()
            self.watcher.join(timeout=10)
        for daemon in self.daemons.values():
            if daemon.proc.poll() is None:
                daemon.proc.send_signal(signal.SIGCONT)
                daemon.terminate()
            daemon.close()
        self.dev.stop()


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.fixture
def replicas(tmp_path: Path, postgres: Any) -> Iterator[Replicas]:
    group = Replicas(tmp_path, postgres.new_database())
    yield group
    group.close()


def test_kill_9_of_the_owner_mid_rollout_is_taken_over_and_the_rollout_completes(
        replicas: Replicas) -> None:
    replicas.start_all({"TFWARDEN_FAILPOINTS": "stage_canary.after_server=kill"})
    new_version(replicas.base, 2)
    first = replicas.daemons["r1"]
    first.proc.wait(timeout=60)  # killed by its failpoint: canary loaded, no outcome journaled
    killed = time.monotonic()
    assert [k for _, k, _ in replicas.journal()] == ["action_intent"]
    owned = wait(lambda: replicas.owner() in ("r2", "r3"), 3 * LEASE_SECONDS, "re-owned")
    owner = replicas.owner()
    assert owner is not None
    wait(lambda: "stage_canary" in replicas.actions(), 30, "pending intent completed")
    done = time.monotonic() - killed
    wait(lambda: replicas.model_of(owner).get("stable_version") == 2, 120,
         "promotion by the new owner")
    print(f"\nfailover: kill -9 -> unit re-owned by {owner} {owned:.1f}s -> stage_canary done "
          f"{done:.1f}s -> promoted {time.monotonic() - killed:.1f}s (lease {LEASE_SECONDS:.0f}s)")
    assert owned <= LEASE_SECONDS + LEASE_SECONDS / 3 + 1.5
    assert replicas.actions() == ["stage_canary", "set_weight", "set_weight", "promote"]
    replicas.assert_one_outcome_per_intent()
    intent = replicas.journal()[0]
    assert intent[1] == "action_intent" and intent[2]["action"] == "stage_canary"
    other = ({"r2", "r3"} - {owner}).pop()
    assert replicas.leases_of(other)["held"] == []  # the standby acted on nothing
    standby = replicas.daemons[other].client
    page = standby.get("/").text  # the standby's page says who runs the model
    assert 'id="replicas"' in page and f"m (<a href=\"{replicas.leases_of(owner)['url']}" in page
    refused = standby.post("/api/v1/models/m/pause")
    assert refused.status_code == 409 and f"replica {owner!r}" in refused.json()["error"]
    assert replicas.watcher is not None and replicas.watcher.failures == []


def test_a_replica_stopped_past_its_lease_is_fenced_off_when_it_wakes(replicas: Replicas) -> None:
    replicas.start_all({"TFWARDEN_FAILPOINTS": "stage_canary.after_intent=stop"})
    first = replicas.daemons["r1"]
    new_version(replicas.base, 2)
    wait(lambda: "failpoint stage_canary.after_intent: stop" in first.stderr(), 30,
         "r1 stopped itself right after journaling its intent")
    wait(lambda: replicas.owner() in ("r2", "r3"), 3 * LEASE_SECONDS, "re-owned")
    wait(lambda: "stage_canary" in replicas.actions(), 30, "the new owner completed the intent")
    config_before = replicas.model_config.read_text()
    first.proc.send_signal(signal.SIGCONT)  # r1 goes on from its failpoint, believing it owns
    wait(lambda: "fenced off" in first.stderr(), 15, "r1 fenced off")
    wait(lambda: UNIT not in replicas.leases_of("r1")["held"], 10, "r1 gives the unit up")
    wait(lambda: first.client.get("/api/v1/models/m").status_code == 409, 10,
         "r1 no longer runs the model (it answers with the owner's name)")
    line = next(x for x in first.stderr().splitlines() if "fenced off" in x)
    print(f"\nfencing: {line.strip()}")
    assert "stage_canary" in line and "holds it with token" in line
    assert replicas.actions()[0] == "stage_canary"
    assert replicas.actions().count("stage_canary") == 1
    replicas.assert_one_outcome_per_intent()
    if replicas.actions() == ["stage_canary"]:  # nothing moved since: r1 wrote nothing either
        assert replicas.model_config.read_text() == config_before
    assert first.proc.poll() is None  # fenced, not crashed
    assert replicas.watcher is not None and replicas.watcher.failures == []


def test_replicas_hold_while_postgres_is_down_and_resume_after(replicas: Replicas,
                                                              postgres: Any) -> None:
    replicas.start_all()
    config_before = replicas.model_config.read_text()
    stopped = time.monotonic()
    postgres.stop()
    try:
        wait(lambda: not replicas.leases_of("r1")["confirmed"], 2 * LEASE_SECONDS,
             "r1's lease unconfirmed")
        new_version(replicas.base, 2)  # a new version while nobody may act
        time.sleep(4)
        leases = replicas.leases_of("r1")
        assert [u["state"] for u in leases["units"] if u["unit"] == UNIT] == ["inconclusive"]
        assert leases["last_error"]
        assert replicas.model_of("r1")["phase"] == "stable"  # held, not staged
        assert replicas.model_config.read_text() == config_before
    finally:
        postgres.start()
    outage = time.monotonic() - stopped
    resumed = wait(lambda: "stage_canary" in replicas.actions(), 60, "resumed after the restart")
    print(f"\npostgres restart: down {outage:.1f}s, nothing staged; the canary staged "
          f"{resumed:.1f}s after the server came back")
    assert [p["action"] for _, k, p in replicas.journal() if k == "action_intent"][0] == \
        "stage_canary"
    replicas.assert_one_outcome_per_intent()
    assert replicas.watcher is not None and replicas.watcher.failures == []
